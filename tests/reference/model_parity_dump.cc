// Runs our fp32 Model on several small random Mixtral configs and writes,
// per config, what model_parity.py needs to recompute everything with
// Hugging Face's MixtralForCausalLM:
//
//   case{n}.safetensors
//     config:     the MixtralConfig fields (I64 / F64 scalars)
//     inputs:     input_ids, labels (ours: labels[b, s] = the token s must
//                 predict, -100 = ignored; the last position is always -100)
//     weights:    every parameter under its Hugging Face on-disk name
//     outputs:    logits [B, S, V], router_logits.{i} [B*S, E], lm_loss_sum,
//                 tokens, loss = lm_loss_sum / tokens, aux_loss
//     gradients:  "grad.<name>"     of lm_loss_sum / tokens
//                 "grad_aux.<name>" of lm_loss_sum / tokens + coef * aux_loss
//                 (scales {lm = 1/tokens, aux = 1, z = 0}: Hugging Face's
//                 loss with output_router_logits=True)
//
//   model_parity_dump OUT_DIR
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/io/safetensors.h"
#include "model/model.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomIds;
using testing::RandomTensor;
using Entries = std::vector<std::pair<std::string, Tensor>>;

struct Case {
  ModelConfig config;
  int64_t batch, seq;
};

// GQA with several kv-head counts (MHA, GQA, MQA), an explicit head_dim,
// 4 to 8 experts, top-1/2/3, 1 to 3 layers, and a vocabulary above the
// cross-entropy's 4096-wide chunk.
std::vector<Case> Cases() {
  auto make = [](int64_t vocab, int64_t hidden, int64_t inter, int64_t layers, int64_t heads,
                 int64_t kv_heads, int64_t head_dim, int64_t experts, int64_t top_k, double theta,
                 double aux_coef) {
    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.intermediate_size = inter;
    c.num_hidden_layers = layers;
    c.num_attention_heads = heads;
    c.num_key_value_heads = kv_heads;
    c.head_dim = head_dim;
    c.num_local_experts = experts;
    c.num_experts_per_tok = top_k;
    c.max_position_embeddings = 64;
    c.rope_theta = theta;
    c.rms_norm_eps = 1e-5;
    c.router_aux_loss_coef = aux_coef;
    c.initializer_range = 0.1;
    return c;
  };
  return {
      {make(67, 32, 48, 2, 4, 2, 0, 4, 2, 1e4, 0.1), 2, 12},
      {make(50, 24, 20, 1, 6, 1, 8, 8, 3, 1e6, 0.5), 3, 9},
      {make(40, 32, 32, 3, 4, 4, 0, 5, 1, 1e6, 0.2), 1, 16},
      {make(80, 48, 40, 2, 8, 2, 0, 6, 2, 500, 0.02), 2, 10},
      {make(4500, 16, 24, 3, 2, 1, 12, 8, 3, 1e4, 1.0), 2, 7},
  };
}

// Next-token labels with the last position and every fifth token ignored.
Tensor Labels(const Tensor& ids) {
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  Tensor labels = Tensor::Empty(ids.shape(), DType::kI32);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      const int64_t t = b * seq + s;
      labels.data<int32_t>()[t] = (s + 1 == seq || t % 5 == 3) ? -100 : ids.data<int32_t>()[t + 1];
    }
  }
  return labels;
}

void DumpCase(const std::string& dir, int index, const Case& c) {
  const ModelConfig& config = c.config;
  Model model(config, DType::kF32);
  model.InitializeWeights(1000 + index);
  // Norm weights away from one, so that a missing or misplaced norm shows.
  uint64_t seed = 2000;
  for (Parameter* p : model.Parameters()) {
    if (p->value.ndim() != 1) continue;
    Tensor w = RandomTensor(p->value.shape(), DType::kF64, seed++, 0.2);
    for (int64_t i = 0; i < w.numel(); ++i) w.SetFromDouble(i, 1.0 + w.GetAsDouble(i));
    p->value.CopyFrom(w.Cast(DType::kF32));
  }
  const Tensor ids = RandomIds({c.batch, c.seq}, config.vocab_size, 3000 + index);
  const Tensor labels = Labels(ids);

  const Tensor logits = model.Logits(ids);
  const std::vector<Tensor> router_logits = model.RouterLogits(ids);
  const Losses eval = model.Evaluate(ids, labels);
  const double lm_scale = 1.0 / static_cast<double>(eval.tokens);
  const Losses lm_only = model.ForwardBackward(ids, labels, {.lm = lm_scale});
  std::vector<Tensor> lm_grads;
  for (Parameter* p : model.Parameters()) {
    lm_grads.push_back(p->grad.Clone());
    p->grad.SetZero();
  }
  model.ForwardBackward(ids, labels, {.lm = lm_scale, .aux = 1, .z = 0});

  const DType i64 = DType::kI64, f64 = DType::kF64;
  Entries entries = {
      {"config.vocab_size", testing::ScalarTensor(config.vocab_size, i64)},
      {"config.hidden_size", testing::ScalarTensor(config.hidden_size, i64)},
      {"config.intermediate_size", testing::ScalarTensor(config.intermediate_size, i64)},
      {"config.num_hidden_layers", testing::ScalarTensor(config.num_hidden_layers, i64)},
      {"config.num_attention_heads", testing::ScalarTensor(config.num_attention_heads, i64)},
      {"config.num_key_value_heads", testing::ScalarTensor(config.num_key_value_heads, i64)},
      {"config.head_dim", testing::ScalarTensor(config.resolved_head_dim(), i64)},
      {"config.num_local_experts", testing::ScalarTensor(config.num_local_experts, i64)},
      {"config.num_experts_per_tok", testing::ScalarTensor(config.num_experts_per_tok, i64)},
      {"config.max_position_embeddings",
       testing::ScalarTensor(config.max_position_embeddings, i64)},
      {"config.rope_theta", testing::ScalarTensor(config.rope_theta, f64)},
      {"config.rms_norm_eps", testing::ScalarTensor(config.rms_norm_eps, f64)},
      {"config.router_aux_loss_coef", testing::ScalarTensor(config.router_aux_loss_coef, f64)},
      {"input_ids", ids},
      {"labels", labels},
      {"logits", logits},
      {"lm_loss_sum", testing::ScalarTensor(lm_only.lm_loss_sum, f64)},
      {"tokens", testing::ScalarTensor(static_cast<double>(lm_only.tokens), i64)},
      {"loss", testing::ScalarTensor(lm_only.lm_loss_sum * lm_scale, f64)},
      {"aux_loss", testing::ScalarTensor(lm_only.aux_loss, f64)},
  };
  for (size_t i = 0; i < router_logits.size(); ++i) {
    entries.push_back({"router_logits." + std::to_string(i), router_logits[i]});
  }
  const std::vector<Parameter*> params = model.Parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    entries.push_back({params[i]->name, params[i]->value});
    entries.push_back({"grad." + params[i]->name, lm_grads[i]});
    entries.push_back({"grad_aux." + params[i]->name, params[i]->grad});
  }
  const std::string path = dir + "/case" + std::to_string(index) + ".safetensors";
  const absl::Status status = WriteSafetensors(path, entries);
  MOE_CHECK(status.ok()) << status.message();
  std::printf("wrote %s (%lld parameters)\n", path.c_str(),
              static_cast<long long>(model.NumParameters()));
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::vector<moe::Case> cases = moe::Cases();
  for (size_t i = 0; i < cases.size(); ++i) moe::DumpCase(argv[1], static_cast<int>(i), cases[i]);
  return 0;
}
