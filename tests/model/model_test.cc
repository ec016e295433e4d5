#include "model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomIds;

constexpr DType kF32 = DType::kF32;
constexpr DType kF64 = DType::kF64;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 31;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.max_position_embeddings = 16;
  c.rope_theta = 100.0;
  // Large coefficients, so that a wrong aux or z gradient shows in the total.
  c.router_aux_loss_coef = 0.3;
  c.router_z_loss_coef = 0.05;
  // Large weights make every layer non-linear (0.02 would leave it near-linear).
  c.initializer_range = 0.3;
  return c;
}

// Labels as a data loader makes them: the next token, -100 at the end, plus
// one more ignored label so that "ignored" is not only the last position.
Tensor NextTokenLabels(const Tensor& ids) {
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  Tensor labels = Tensor::Empty(ids.shape(), DType::kI32);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      labels.data<int32_t>()[b * seq + s] =
          s + 1 < seq ? ids.data<int32_t>()[b * seq + s + 1] : -100;
    }
  }
  labels.data<int32_t>()[1] = -100;
  return labels;
}

double MinTopKGap(const std::vector<Tensor>& layers, int64_t top_k) {
  double gap = INFINITY;
  for (const Tensor& logits_TE : layers) {
    const int64_t tokens = logits_TE.dim(0), experts = logits_TE.dim(1);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<double> row(experts);
      for (int64_t e = 0; e < experts; ++e) row[e] = logits_TE.GetAsDouble(t * experts + e);
      std::sort(row.rbegin(), row.rend());
      gap = std::min(gap, row[top_k - 1] - row[top_k]);
    }
  }
  return gap;
}

double TotalLoss(const ModelConfig& c, const Losses& l, const LossScales& s) {
  return s.lm * l.lm_loss_sum + s.aux * c.router_aux_loss_coef * l.aux_loss +
         s.z * c.router_z_loss_coef * l.z_loss;
}

void ZeroGrads(Model* model) {
  for (Parameter* p : model->Parameters()) p->grad.SetZero();
}

bool BitIdentical(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Finite differences of the whole loss for every parameter. The loss is
// smooth in all weights as long as no top-k choice switches: the seed is
// picked so that every layer's k-th and (k+1)-th router logits are at least
// 1e-3 apart (asserted), while a step of h = 1e-5 moves logits by ~1e-5.
// Central differences in double: truncation ~h^2 = 1e-10 and rounding
// ~1e-16 * loss / h ~ 3e-11 against gradients of ~1e-4 and more: 1e-6.
constexpr double kModelGradTolerance = 1e-6;
constexpr uint64_t kFdSeed = 7;

struct FdCase {
  const char* what;
  LossScales scales;  // lm is set to 1 / tokens when non-zero
  int64_t elements;   // per parameter
};

void PrintTo(const FdCase& c, std::ostream* os) { *os << c.what; }

class ModelGradientTest : public ::testing::TestWithParam<FdCase> {};

TEST_P(ModelGradientTest, EveryParameterMatchesFiniteDifferences) {
  const ModelConfig config = TinyConfig();
  Model model(config, kF64);
  model.InitializeWeights(kFdSeed);
  // Norm weights away from one, so that their gradients are checked at a
  // general point.
  for (Parameter* p : model.Parameters()) {
    if (p->value.ndim() != 1) continue;
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      p->value.SetFromDouble(i, 1.0 + 0.3 * std::sin(1.7 * static_cast<double>(i + 1)));
    }
  }
  const Tensor ids = RandomIds({2, 6}, config.vocab_size, 11);
  const Tensor labels = NextTokenLabels(ids);
  ASSERT_GT(MinTopKGap(model.RouterLogits(ids), config.num_experts_per_tok), 1e-3)
      << "pick another kFdSeed: near tie in the routing";

  LossScales scales = GetParam().scales;
  const Losses at = model.Evaluate(ids, labels);
  ASSERT_EQ(at.tokens, 9);  // 2 x 6, minus 2 last positions, minus one -100
  if (scales.lm != 0) scales.lm = 1.0 / static_cast<double>(at.tokens);
  auto loss = [&] { return TotalLoss(config, model.Evaluate(ids, labels), scales); };
  ZeroGrads(&model);
  const Losses losses = model.ForwardBackward(ids, labels, scales);
  EXPECT_EQ(losses.lm_loss_sum, at.lm_loss_sum);
  EXPECT_GT(losses.aux_loss, 0);
  EXPECT_GT(losses.z_loss, 0);

  double worst = 0;
  std::vector<int64_t> checked;
  for (Parameter* p : model.Parameters()) {
    const Tensor analytic = p->grad.Clone();
    const Tensor numeric = NumericalGradient(p->value, loss, 1e-5, GetParam().elements, &checked);
    const double error = GradientError(analytic, numeric, checked);
    worst = std::max(worst, error);
    EXPECT_LT(error, kModelGradTolerance) << p->name;
  }
  std::printf("worst gradient error over all parameters: %.2e\n", worst);
}

INSTANTIATE_TEST_SUITE_P(Losses, ModelGradientTest,
                         ::testing::Values(FdCase{"Total", {.lm = 1, .aux = 1, .z = 1}, 12},
                                           FdCase{"AuxOnly", {.lm = 0, .aux = 1, .z = 0}, 6},
                                           FdCase{"ZOnly", {.lm = 0, .aux = 0, .z = 1}, 6}),
                         [](const ::testing::TestParamInfo<FdCase>& param_info) {
                           return param_info.param.what;
                         });

// Gradient accumulation: two micro-batches with lm = 1 / (tokens of both)
// give the gradient of one call on the concatenated batch. Only for the LM
// loss: the aux loss pools its statistics over the layers of ONE call, so
// per micro-batch aux losses differ from the aux loss of the whole batch by
// design (as in Hugging Face and Megatron); z is a per-call mean too.
TEST(ModelTest, MicroBatchesAccumulateToTheWholeBatch) {
  const ModelConfig config = TinyConfig();
  Model whole(config, kF64), split(config, kF64);
  whole.InitializeWeights(3);
  split.InitializeWeights(3);
  const Tensor ids = RandomIds({4, 6}, config.vocab_size, 12);
  const Tensor labels = NextTokenLabels(ids);
  const Losses all = whole.Evaluate(ids, labels);
  const double lm_scale = 1.0 / static_cast<double>(all.tokens);

  const Losses w = whole.ForwardBackward(ids, labels, {.lm = lm_scale});
  const Losses a = split.ForwardBackward(ids.Slice(0, 2), labels.Slice(0, 2), {.lm = lm_scale});
  const Losses b = split.ForwardBackward(ids.Slice(2, 4), labels.Slice(2, 4), {.lm = lm_scale});
  EXPECT_EQ(a.tokens + b.tokens, w.tokens);
  EXPECT_NEAR(a.lm_loss_sum + b.lm_loss_sum, w.lm_loss_sum, 1e-12 * w.lm_loss_sum);
  const std::vector<Parameter*> pw = whole.Parameters(), ps = split.Parameters();
  for (size_t i = 0; i < pw.size(); ++i) {
    EXPECT_LT(MaxRelativeError(ps[i]->grad, pw[i]->grad), 1e-12) << pw[i]->name;
  }
}

TEST(ModelTest, ForwardBackwardAccumulatesAndMatchesEvaluate) {
  const ModelConfig config = TinyConfig();
  Model model(config, kF64);
  model.InitializeWeights(4);
  const Tensor ids = RandomIds({2, 5}, config.vocab_size, 13);
  const Tensor labels = NextTokenLabels(ids);
  const LossScales scales{.lm = 0.1, .aux = 1, .z = 1};
  const Losses eval = model.Evaluate(ids, labels);
  const Losses once = model.ForwardBackward(ids, labels, scales);
  EXPECT_EQ(once.lm_loss_sum, eval.lm_loss_sum);
  EXPECT_EQ(once.tokens, eval.tokens);
  EXPECT_EQ(once.aux_loss, eval.aux_loss);
  EXPECT_EQ(once.z_loss, eval.z_loss);
  std::vector<Tensor> first;
  for (Parameter* p : model.Parameters()) first.push_back(p->grad.Clone());
  model.ForwardBackward(ids, labels, scales);
  const std::vector<Parameter*> params = model.Parameters();
  // Not bit-exact: the GEMMs fold the old gradient into their sums (beta = 1).
  for (size_t i = 0; i < params.size(); ++i) {
    for (int64_t j = 0; j < first[i].numel(); ++j) {
      ASSERT_NEAR(params[i]->grad.GetAsDouble(j), 2 * first[i].GetAsDouble(j),
                  1e-14 + 1e-12 * std::abs(first[i].GetAsDouble(j)))
          << params[i]->name;
    }
  }
}

// The LM loss of the fused head equals the cross-entropy of Logits().
TEST(ModelTest, LogitsGiveTheLmLoss) {
  const ModelConfig config = TinyConfig();
  Model model(config, kF32);
  model.InitializeWeights(5);
  const Tensor ids = RandomIds({2, 7}, config.vocab_size, 14);
  const Tensor labels = NextTokenLabels(ids);
  const Tensor logits = model.Logits(ids);
  ASSERT_EQ(logits.shape(), (Shape{2, 7, config.vocab_size}));
  ASSERT_EQ(logits.dtype(), kF32);
  double loss_sum = 0;
  const int64_t vocab = config.vocab_size;
  for (int64_t t = 0; t < ids.numel(); ++t) {
    const int32_t label = labels.data<int32_t>()[t];
    if (label < 0) continue;
    double max = -INFINITY, sum = 0;
    for (int64_t v = 0; v < vocab; ++v) max = std::max(max, logits.GetAsDouble(t * vocab + v));
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(logits.GetAsDouble(t * vocab + v) - max);
    loss_sum += max + std::log(sum) - logits.GetAsDouble(t * vocab + label);
  }
  EXPECT_NEAR(model.Evaluate(ids, labels).lm_loss_sum, loss_sum, 1e-5 * loss_sum);
}

TEST(ModelTest, Float32MatchesFloat64) {
  const ModelConfig config = TinyConfig();
  Model m32(config, kF32), m64(config, kF64);
  m32.InitializeWeights(6);
  m64.InitializeWeights(6);
  const Tensor ids = RandomIds({2, 8}, config.vocab_size, 15);
  const Tensor labels = NextTokenLabels(ids);
  ASSERT_GT(MinTopKGap(m64.RouterLogits(ids), config.num_experts_per_tok), 1e-4);
  const LossScales scales{.lm = 0.1, .aux = 1, .z = 1};
  const Losses l32 = m32.ForwardBackward(ids, labels, scales);
  const Losses l64 = m64.ForwardBackward(ids, labels, scales);
  EXPECT_NEAR(l32.lm_loss_sum, l64.lm_loss_sum, 1e-5 * l64.lm_loss_sum);
  EXPECT_NEAR(l32.aux_loss, l64.aux_loss, 1e-5 * l64.aux_loss);
  EXPECT_NEAR(l32.z_loss, l64.z_loss, 1e-5 * l64.z_loss);
  EXPECT_LT(MaxRelativeError(m32.Logits(ids), m64.Logits(ids)), 1e-5);
  const std::vector<Parameter*> p32 = m32.Parameters(), p64 = m64.Parameters();
  for (size_t i = 0; i < p32.size(); ++i) {
    EXPECT_LT(MaxRelativeError(p32[i]->grad, p64[i]->grad), 1e-4) << p64[i]->name;
  }
}

TEST(ModelTest, InitializationIsReproducibleAndKeyedByName) {
  const ModelConfig config = TinyConfig();
  Model a(config), b(config);
  a.InitializeWeights(42);
  std::vector<Tensor> first;
  for (Parameter* p : a.Parameters()) first.push_back(p->value.Clone());
  a.InitializeWeights(42);
  b.InitializeWeights(42);
  const std::vector<Parameter*> pa = a.Parameters(), pb = b.Parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(BitIdentical(pa[i]->value, first[i])) << pa[i]->name;
    EXPECT_TRUE(BitIdentical(pb[i]->value, first[i])) << pb[i]->name;
  }
  // Another seed draws other values.
  b.InitializeWeights(43);
  EXPECT_FALSE(BitIdentical(pb[0]->value, first[0]));  // embed_tokens

  // Values depend on the name, not on what else the model holds: a deeper
  // model draws the same values for the parameters both have.
  ModelConfig deeper = config;
  deeper.num_hidden_layers = 3;
  Model c(deeper);
  c.InitializeWeights(42);
  for (const Parameter* p : pa) {
    EXPECT_TRUE(BitIdentical(c.FindParameter(p->name)->value, p->value)) << p->name;
  }

  // A shard drawn on its own is exactly its slice: rows [4, 8) of q_proj.
  const Parameter* q = a.FindParameter("model.layers.1.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  Tensor shard = Tensor::Empty({4, config.hidden_size}, kF32);
  InitNormal(&shard, {.global_shape = q->value.shape(), .offsets = {4, 0}}, 42,
             ParameterStream(q->name), 0.0, config.initializer_range);
  EXPECT_TRUE(BitIdentical(shard, q->value.Slice(4, 8)));

  // Norms are one; the rest N(0, initializer_range^2) with distinct streams.
  double sum2 = 0;
  int64_t n = 0;
  for (const Parameter* p : pa) {
    if (p->name.ends_with("norm.weight")) {
      for (int64_t i = 0; i < p->value.numel(); ++i) ASSERT_EQ(p->value.GetAsDouble(i), 1.0);
      continue;
    }
    for (int64_t i = 0; i < p->value.numel(); ++i) sum2 += std::pow(p->value.GetAsDouble(i), 2);
    n += p->value.numel();
  }
  EXPECT_NEAR(std::sqrt(sum2 / static_cast<double>(n)), config.initializer_range,
              0.05 * config.initializer_range);
  const Parameter* w1 = a.FindParameter("model.layers.0.block_sparse_moe.experts.0.w1.weight");
  const Parameter* w3 = a.FindParameter("model.layers.0.block_sparse_moe.experts.0.w3.weight");
  EXPECT_FALSE(BitIdentical(w1->value, w3->value));
}

TEST(ModelTest, ParametersAreExactlyTheHuggingFaceNames) {
  ModelConfig config = TinyConfig();
  config.num_hidden_layers = 1;
  config.num_local_experts = 2;
  config.num_experts_per_tok = 1;
  Model model(config);
  std::vector<std::string> names;
  for (const Parameter* p : model.Parameters()) names.push_back(p->name);
  const std::string l = "model.layers.0.";
  EXPECT_EQ(names, (std::vector<std::string>{
                       "model.embed_tokens.weight",
                       l + "input_layernorm.weight",
                       l + "self_attn.q_proj.weight",
                       l + "self_attn.k_proj.weight",
                       l + "self_attn.v_proj.weight",
                       l + "self_attn.o_proj.weight",
                       l + "post_attention_layernorm.weight",
                       l + "block_sparse_moe.gate.weight",
                       l + "block_sparse_moe.experts.0.w1.weight",
                       l + "block_sparse_moe.experts.0.w2.weight",
                       l + "block_sparse_moe.experts.0.w3.weight",
                       l + "block_sparse_moe.experts.1.w1.weight",
                       l + "block_sparse_moe.experts.1.w2.weight",
                       l + "block_sparse_moe.experts.1.w3.weight",
                       "model.norm.weight",
                       "lm_head.weight",
                   }));
  EXPECT_EQ(model.FindParameter("lm_head.weight")->value.shape(), (Shape{31, 16}));
  EXPECT_EQ(model.FindParameter("model.layers.0.mlp.gate.weight"), nullptr);
}

TEST(ModelTest, CountsParameters) {
  const ModelConfig c = TinyConfig();
  Model model(c);
  const int64_t h = c.hidden_size, v = c.vocab_size, i = c.intermediate_size;
  const int64_t head = c.resolved_head_dim();
  const int64_t attention = h * head * (2 * c.num_attention_heads + 2 * c.num_key_value_heads);
  const int64_t expert = 3 * h * i;
  const int64_t per_layer_dense = 2 * h + attention + c.num_local_experts * h;
  EXPECT_EQ(model.NumParameters(),
            2 * v * h + h + c.num_hidden_layers * (per_layer_dense + c.num_local_experts * expert));
  EXPECT_EQ(
      model.NumActiveParameters(),
      2 * v * h + h + c.num_hidden_layers * (per_layer_dense + c.num_experts_per_tok * expert));
}

TEST(ModelDeathTest, InvalidConfigNamesTheField) {
  ModelConfig config = TinyConfig();
  config.num_key_value_heads = 3;
  EXPECT_DEATH(Model model(config), "Model: invalid config: .*num_key_value_heads");
}

TEST(ModelDeathTest, BadInputsAreNamed) {
  ModelConfig config = TinyConfig();
  config.num_hidden_layers = 1;
  Model model(config);
  model.InitializeWeights(1);
  const Tensor ids = RandomIds({2, 4}, config.vocab_size, 1);
  EXPECT_DEATH(model.Logits(Tensor::Zeros({2, 4}, kF32)), "Model: input_ids must be kI32");
  EXPECT_DEATH(model.Evaluate(ids, RandomIds({2, 3}, config.vocab_size, 2)),
               "Model: labels .* must match input_ids");
  EXPECT_DEATH(model.Logits(RandomIds({1, 17}, config.vocab_size, 3)), "max_position_embeddings");
  EXPECT_DEATH(model.Logits(RandomIds({1, 4}, 100, 4)), "model.embed_tokens");
}

}  // namespace
}  // namespace moe
