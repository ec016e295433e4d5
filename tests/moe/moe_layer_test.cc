#include "moe/moe_layer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Central differences in double, h = 1e-5, inputs chosen away from top-k
// switches (asserted): the bound of the core layers.
constexpr double kGradTolerance = 1e-7;

void FillLayer(MoeLayer* layer, uint64_t seed) {
  for (Parameter* p : layer->Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), p->value.dtype(), seed++, 0.4));
  }
}

double MinTopKGap(const Tensor& logits_TE, int64_t top_k) {
  const int64_t tokens = logits_TE.dim(0), experts = logits_TE.dim(1);
  if (top_k == experts) return INFINITY;
  double gap = INFINITY;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> row(experts);
    for (int64_t e = 0; e < experts; ++e) row[e] = logits_TE.GetAsDouble(t * experts + e);
    std::sort(row.rbegin(), row.rend());
    gap = std::min(gap, row[top_k - 1] - row[top_k]);
  }
  return gap;
}

bool BitIdentical(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

struct Case {
  int64_t experts, top_k;
};
void PrintTo(const Case& c, std::ostream* os) { *os << "E=" << c.experts << " K=" << c.top_k; }

class MoeLayerGradientTest : public ::testing::TestWithParam<Case> {};

// loss = <y, dy> + scale * (c_aux * aux + c_z * z) over one layer: every
// gradient path of the block at once (experts, routing weights, aux, z).
TEST_P(MoeLayerGradientTest, BackwardMatchesFiniteDifferences) {
  const Case c = GetParam();
  const int64_t tokens = 10, hidden = 8;
  const double c_aux = 0.5, c_z = 0.1, scale = 0.8;
  MoeLayer layer(
      "model.layers.0.block_sparse_moe",
      {.hidden_size = hidden, .intermediate_size = 6, .num_experts = c.experts, .top_k = c.top_k},
      DType::kF64);
  FillLayer(&layer, 100 * c.experts + c.top_k);
  Tensor x = RandomTensor({2, tokens / 2, hidden}, DType::kF64, 7 + c.top_k);
  const Tensor dy = RandomTensor({2, tokens / 2, hidden}, DType::kF64, 8);

  auto loss = [&] {
    MoeLayer::Saved s;
    const MoeLayer::Output out = layer.Forward(x, &s);
    return Dot(out.y, dy) + scale * (c_aux * ComputeLoadBalancingLoss(out.stats, 1, 1).aux +
                                     c_z * ComputeZLoss(out.stats, 1, 1).z);
  };
  MoeLayer::Saved saved;
  const MoeLayer::Output out = layer.Forward(x, &saved);
  ASSERT_EQ(out.y.shape(), x.shape());
  ASSERT_GT(MinTopKGap(out.logits_TE, c.top_k), 1e-2) << "pick another seed: near tie";
  const Tensor dx = layer.Backward(dy, ComputeLoadBalancingLoss(out.stats, c_aux, scale).daux_dprob,
                                   ComputeZLoss(out.stats, c_z, scale).z_scale, saved);
  ASSERT_EQ(dx.shape(), x.shape());

  std::vector<int64_t> checked;
  EXPECT_LT(GradientError(dx, NumericalGradient(x, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  Parameter& gate = layer.router().weight();
  const Tensor dgate = gate.grad.Clone();
  EXPECT_LT(GradientError(dgate, NumericalGradient(gate.value, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  // Three experts' weights (first, middle, last), 12 elements of each.
  for (int64_t e : {int64_t{0}, c.experts / 2, c.experts - 1}) {
    GroupedExperts& experts = layer.experts();
    for (Parameter* p : {&experts.w1(e), &experts.w2(e), &experts.w3(e)}) {
      const Tensor analytic = p->grad.Clone();
      const Tensor numeric = NumericalGradient(p->value, loss, 1e-5, 12, &checked);
      EXPECT_LT(GradientError(analytic, numeric, checked), kGradTolerance) << p->name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TopK, MoeLayerGradientTest,
                         ::testing::Values(Case{4, 1}, Case{4, 2}, Case{6, 3}, Case{8, 2},
                                           Case{8, 3}),
                         [](const ::testing::TestParamInfo<Case>& param_info) {
                           return absl::StrCat("E", param_info.param.experts, "K",
                                               param_info.param.top_k);
                         });

TEST(MoeLayerTest, ParametersAreNamedAsHuggingFaceSavesThem) {
  MoeLayer layer("model.layers.2.block_sparse_moe",
                 {.hidden_size = 4, .intermediate_size = 3, .num_experts = 2, .top_k = 1});
  const std::vector<Parameter*> params = layer.Parameters();
  std::vector<std::string> names;
  for (const Parameter* p : params) names.push_back(p->name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "model.layers.2.block_sparse_moe.gate.weight",
                       "model.layers.2.block_sparse_moe.experts.0.w1.weight",
                       "model.layers.2.block_sparse_moe.experts.0.w2.weight",
                       "model.layers.2.block_sparse_moe.experts.0.w3.weight",
                       "model.layers.2.block_sparse_moe.experts.1.w1.weight",
                       "model.layers.2.block_sparse_moe.experts.1.w2.weight",
                       "model.layers.2.block_sparse_moe.experts.1.w3.weight",
                   }));
}

TEST(MoeLayerTest, Float32MatchesFloat64) {
  const MoeOptions options{
      .hidden_size = 32, .intermediate_size = 40, .num_experts = 8, .top_k = 2};
  MoeLayer l32("moe", options, DType::kF32);
  MoeLayer l64("moe", options, DType::kF64);
  FillLayer(&l64, 300);
  const std::vector<Parameter*> p32 = l32.Parameters(), p64 = l64.Parameters();
  for (size_t i = 0; i < p32.size(); ++i) p32[i]->value.CopyFrom(p64[i]->value.Cast(DType::kF32));
  const Tensor x = RandomTensor({48, 32}, DType::kF64, 301);
  const Tensor dy = RandomTensor({48, 32}, DType::kF64, 302);
  MoeLayer::Saved s32, s64;
  const MoeLayer::Output o32 = l32.Forward(x.Cast(DType::kF32), &s32);
  const MoeLayer::Output o64 = l64.Forward(x, &s64);
  ASSERT_GT(MinTopKGap(o64.logits_TE, 2), 1e-4);
  EXPECT_LT(MaxRelativeError(o32.y, o64.y), 1e-5);
  EXPECT_LT(MaxRelativeError(o32.logits_TE, o64.logits_TE), 1e-6);
  const double c_aux = 0.01, c_z = 0.001;
  const Tensor dx32 =
      l32.Backward(dy.Cast(DType::kF32), ComputeLoadBalancingLoss(o32.stats, c_aux, 1).daux_dprob,
                   ComputeZLoss(o32.stats, c_z, 1).z_scale, s32);
  const Tensor dx64 = l64.Backward(dy, ComputeLoadBalancingLoss(o64.stats, c_aux, 1).daux_dprob,
                                   ComputeZLoss(o64.stats, c_z, 1).z_scale, s64);
  EXPECT_LT(MaxRelativeError(dx32, dx64), 1e-5);
  for (size_t i = 0; i < p32.size(); ++i) {
    EXPECT_LT(MaxRelativeError(p32[i]->grad, p64[i]->grad), 1e-4) << p32[i]->name;
  }
}

TEST(MoeLayerTest, TwoRunsAreBitIdentical) {
  const MoeOptions options{
      .hidden_size = 64, .intermediate_size = 96, .num_experts = 8, .top_k = 2};
  const Tensor x = RandomTensor({300, 64}, DType::kF32, 401);
  const Tensor dy = RandomTensor({300, 64}, DType::kF32, 402);
  std::vector<Tensor> results[2];
  for (auto& result : results) {
    MoeLayer layer("moe", options);
    FillLayer(&layer, 400);
    MoeLayer::Saved saved;
    const MoeLayer::Output out = layer.Forward(x, &saved);
    const LoadBalancingLoss aux = ComputeLoadBalancingLoss(out.stats, 0.01, 1);
    result.push_back(out.y);
    result.push_back(out.logits_TE);
    result.push_back(layer.Backward(dy, aux.daux_dprob, 1e-3, saved));
    for (Parameter* p : layer.Parameters()) result.push_back(p->grad);
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_TRUE(BitIdentical(results[0][i], results[1][i])) << "tensor " << i;
  }
}

TEST(MoeLayerTest, ValidateMoeOptionsNamesTheField) {
  EXPECT_TRUE(ValidateMoeOptions({.hidden_size = 8, .intermediate_size = 16}).ok());
  const absl::Status bad_k =
      ValidateMoeOptions({.hidden_size = 8, .intermediate_size = 16, .num_experts = 4, .top_k = 5});
  EXPECT_EQ(bad_k.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad_k.message(), "top_k must be in [1, num_experts = 4], got 5");
  EXPECT_EQ(
      ValidateMoeOptions({.hidden_size = 8, .intermediate_size = 16, .num_experts = 0}).message(),
      "num_experts must be >= 1, got 0");
  EXPECT_EQ(ValidateMoeOptions({.hidden_size = 8, .intermediate_size = 0}).message(),
            "intermediate_size must be >= 1, got 0");
}

TEST(MoeLayerDeathTest, BadOptionsAndShapesNameTheLayer) {
  EXPECT_DEATH(MoeLayer("model.layers.0.block_sparse_moe",
                        {.hidden_size = 8, .intermediate_size = 16, .num_experts = 4, .top_k = 0}),
               "model.layers.0.block_sparse_moe: top_k must be in \\[1, num_experts = 4\\], got 0");
  EXPECT_DEATH(
      MoeLayer("blk", {.hidden_size = 8, .intermediate_size = 16}, DType::kF32, Device::kCuda),
      "the CUDA MoE path is not built yet");
  MoeLayer layer("model.layers.0.block_sparse_moe", {.hidden_size = 8, .intermediate_size = 16});
  MoeLayer::Saved saved;
  EXPECT_DEATH(layer.Forward(Tensor::Zeros({3, 9}, DType::kF32), &saved),
               "model.layers.0.block_sparse_moe: input must be \\[..., 8\\]");
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// The expert variants and dropping: with a shared expert, with Residual-MoE,
// with both, and with capacity drops, every parameter's gradient (12
// elements each) and dx against central differences in double.
struct VariantCase {
  const char* name;
  int64_t shared = 0;
  bool residual = false;
  double capacity_factor = 0;
};

void PrintTo(const VariantCase& c, std::ostream* os) { *os << c.name; }

class MoeLayerVariantTest : public ::testing::TestWithParam<VariantCase> {};

TEST_P(MoeLayerVariantTest, BackwardMatchesFiniteDifferences) {
  const VariantCase c = GetParam();
  MoeOptions options{.hidden_size = 8, .intermediate_size = 6, .num_experts = 4, .top_k = 2};
  options.shared_expert_intermediate_size = c.shared;
  options.use_residual = c.residual;
  options.capacity_factor = c.capacity_factor;
  MoeLayer layer("model.layers.0.block_sparse_moe", options, DType::kF64);
  FillLayer(&layer, 900);
  Tensor x = testing::RandomTensor({2, 6, 8}, DType::kF64, 901);
  const Tensor dy = testing::RandomTensor({2, 6, 8}, DType::kF64, 902);
  auto loss = [&] {
    MoeLayer::Saved s;
    return testing::Dot(layer.Forward(x, &s).y, dy);
  };
  MoeLayer::Saved saved;
  const MoeLayer::Output out = layer.Forward(x, &saved);
  ASSERT_GT(MinTopKGap(out.logits_TE, 2), 1e-2) << "pick another seed: near tie";
  if (c.capacity_factor > 0) {
    double dropped = 0;
    for (double d : out.dropped_E) dropped += d;
    ASSERT_GT(dropped, 0) << "the case must drop something";
  }
  const Tensor dx = layer.Backward(dy, std::vector<double>{}, 0.0, saved);
  std::vector<int64_t> checked;
  EXPECT_LT(
      testing::GradientError(dx, testing::NumericalGradient(x, loss, 1e-5, 0, &checked), checked),
      kGradTolerance);
  for (Parameter* p : layer.Parameters()) {
    const Tensor analytic = p->grad.Clone();
    const Tensor numeric = testing::NumericalGradient(p->value, loss, 1e-5, 12, &checked);
    EXPECT_LT(testing::GradientError(analytic, numeric, checked), kGradTolerance) << p->name;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeLayerVariantTest,
                         ::testing::Values(VariantCase{"SharedExpert", 10},
                                           VariantCase{"Residual", 0, true},
                                           VariantCase{"SharedAndResidual", 5, true},
                                           VariantCase{"CapacityDrop", 0, false, 0.5}),
                         [](const ::testing::TestParamInfo<VariantCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

TEST(MoeLayerTest, VariantParametersAreNamed) {
  MoeOptions options{.hidden_size = 8, .intermediate_size = 6, .num_experts = 2, .top_k = 1};
  options.shared_expert_intermediate_size = 4;
  options.use_residual = true;
  MoeLayer layer("m", options);
  std::vector<std::string> names;
  for (Parameter* p : layer.Parameters()) names.push_back(p->name);
  const std::vector<std::string> tail(names.end() - 7, names.end());
  EXPECT_EQ(tail, (std::vector<std::string>{
                      "m.shared_expert.gate_proj.weight", "m.shared_expert.up_proj.weight",
                      "m.shared_expert.down_proj.weight", "m.residual.coefficient.weight",
                      "m.residual.mlp.gate_proj.weight", "m.residual.mlp.up_proj.weight",
                      "m.residual.mlp.down_proj.weight"}));
}

}  // namespace
}  // namespace moe
