#include "moe/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::NumericalGradient;
using testing::RandomTensor;

// As in the core layers: central differences in double with h = 1e-5. The
// router is smooth as long as no top-k choice switches, which the tests check
// by asserting a logit gap far above h times the input scale.
constexpr double kGradTolerance = 1e-7;

// Smallest gap between a token's K-th and (K+1)-th largest logit.
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

TEST(RouterTest, ForwardMatchesHandComputation) {
  // H = 2, E = 4; gate rows chosen so token 0 has logits (1, 3, 2, 0).
  Router router("gate", 2, 4, 2, DType::kF64);
  router.weight().value.CopyFrom(Tensor::FromVector({4, 2}, {1, 0, 3, 0, 2, 0, 0, 0}, DType::kF64));
  const Tensor x = Tensor::FromVector({1, 2}, {1, 5}, DType::kF64);
  Router::Saved saved;
  const Routing r = router.Forward(x, &saved);
  const double z = std::exp(1) + std::exp(3) + std::exp(2) + 1;
  EXPECT_EQ(r.ids_TK.data<int32_t>()[0], 1);
  EXPECT_EQ(r.ids_TK.data<int32_t>()[1], 2);
  const double p1 = std::exp(3) / z, p2 = std::exp(2) / z;
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), p1 / (p1 + p2), 1e-15);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(1), p2 / (p1 + p2), 1e-15);
  EXPECT_EQ(r.logits_TE.GetAsDouble(1), 3.0);
  EXPECT_EQ(r.stats.rows, 1);
  EXPECT_EQ(r.stats.choice_counts, (std::vector<double>{0, 1, 1, 0}));
  EXPECT_NEAR(r.stats.prob_sums[0], std::exp(1) / z, 1e-15);
  EXPECT_NEAR(r.stats.prob_sums[3], 1 / z, 1e-15);
  EXPECT_NEAR(r.stats.z_sum, std::log(z) * std::log(z), 1e-13);
}

TEST(RouterTest, TiesGoToTheLowerExpertIndex) {
  Router router("gate", 1, 4, 2, DType::kF32);
  // Token 0: logits all 0. Token 1: logits (1, 3, 3, 0) * 1.
  router.weight().value.CopyFrom(Tensor::FromVector({4, 1}, {1, 3, 3, 0}));
  const Tensor x = Tensor::FromVector({2, 1}, {0, 1});
  Router::Saved saved;
  const Routing r = router.Forward(x, &saved);
  const int32_t* ids = r.ids_TK.data<int32_t>();
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_EQ(ids[2], 1);
  EXPECT_EQ(ids[3], 2);
  EXPECT_EQ(r.weights_TK.GetAsDouble(0), 0.5);
  EXPECT_EQ(r.weights_TK.GetAsDouble(2), 0.5);
}

// The full router objective on one layer:
//   <weights, G> + scale * (c_aux * aux + c_z * z).
struct Objective {
  double c_aux = 0.3, c_z = 0.2, scale = 0.7;
};

class RouterGradientTest : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(RouterGradientTest, BackwardMatchesFiniteDifferences) {
  const auto [experts, top_k] = GetParam();
  const int64_t tokens = 9, hidden = 8;
  const Objective o;
  Router router("model.layers.0.block_sparse_moe.gate", hidden, experts, top_k, DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 10 + experts, 0.5));
  Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 20 + top_k);
  const Tensor g = RandomTensor({tokens, top_k}, DType::kF64, 30);

  auto loss = [&] {
    Router::Saved s;
    const Routing r = router.Forward(x, &s);
    return Dot(r.weights_TK, g) + o.scale * (o.c_aux * ComputeLoadBalancingLoss(r.stats, 1, 1).aux +
                                             o.c_z * ComputeZLoss(r.stats, 1, 1).z);
  };
  Router::Saved saved;
  const Routing routing = router.Forward(x, &saved);
  ASSERT_GT(MinTopKGap(routing.logits_TE, top_k), 1e-2) << "pick another seed: near tie";
  const LoadBalancingLoss aux = ComputeLoadBalancingLoss(routing.stats, o.c_aux, o.scale);
  const ZLoss z = ComputeZLoss(routing.stats, o.c_z, o.scale);
  const Tensor dx = router.Backward(g, aux.daux_dprob, z.z_scale, saved);
  const Tensor dgate = router.weight().grad.Clone();

  std::vector<int64_t> checked;
  const Tensor numeric_dx = NumericalGradient(x, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dx, numeric_dx, checked), kGradTolerance);
  const Tensor numeric_dgate = NumericalGradient(router.weight().value, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dgate, numeric_dgate, checked), kGradTolerance);
}

INSTANTIATE_TEST_SUITE_P(TopK, RouterGradientTest,
                         ::testing::Values(std::pair{4, 1}, std::pair{4, 2}, std::pair{6, 3},
                                           std::pair{8, 2}, std::pair{8, 8}));

TEST(RouterTest, EachLossTermAloneMatchesFiniteDifferences) {
  // The three gradient paths separately, so a wrong one cannot hide behind
  // the others' magnitude.
  const int64_t tokens = 7, hidden = 6, experts = 5, top_k = 2;
  Router router("gate", hidden, experts, top_k, DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 41, 0.5));
  Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 42);
  const Tensor g = RandomTensor({tokens, top_k}, DType::kF64, 43);
  const Tensor zero_g = Tensor::Zeros({tokens, top_k}, DType::kF64);
  for (int term = 0; term < 3; ++term) {
    auto loss = [&] {
      Router::Saved s;
      const Routing r = router.Forward(x, &s);
      if (term == 0) return Dot(r.weights_TK, g);
      if (term == 1) return ComputeLoadBalancingLoss(r.stats, 1, 1).aux;
      return ComputeZLoss(r.stats, 1, 1).z;
    };
    Router::Saved saved;
    const Routing routing = router.Forward(x, &saved);
    ASSERT_GT(MinTopKGap(routing.logits_TE, top_k), 1e-2);
    const Tensor dx =
        router.Backward(term == 0 ? g : zero_g,
                        term == 1 ? ComputeLoadBalancingLoss(routing.stats, 1, 1).daux_dprob
                                  : std::vector<double>{},
                        term == 2 ? ComputeZLoss(routing.stats, 1, 1).z_scale : 0.0, saved);
    std::vector<int64_t> checked;
    const Tensor numeric_dx = NumericalGradient(x, loss, 1e-5, 0, &checked);
    EXPECT_LT(GradientError(dx, numeric_dx, checked), kGradTolerance) << "term " << term;
  }
}

TEST(RouterTest, AuxLossPooledOverTwoLayers) {
  // Hugging Face pools f and P over the rows of all layers; the gradient of
  // that pooled loss reaches both routers through one daux_dprob.
  const int64_t hidden = 6, experts = 4, top_k = 2;
  Router first("layers.0.gate", hidden, experts, top_k, DType::kF64);
  Router second("layers.1.gate", hidden, experts, top_k, DType::kF64);
  first.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 51, 0.6));
  second.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 52, 0.6));
  Tensor x1 = RandomTensor({8, hidden}, DType::kF64, 53);
  Tensor x2 = RandomTensor({5, hidden}, DType::kF64, 54);  // a different row count
  auto pooled = [&](Router::Saved* s1, Router::Saved* s2, Routing* r1, Routing* r2) {
    *r1 = first.Forward(x1, s1);
    *r2 = second.Forward(x2, s2);
    RouterStats stats;
    stats.Add(r1->stats);
    stats.Add(r2->stats);
    return stats;
  };
  auto loss = [&] {
    Router::Saved s1, s2;
    Routing r1, r2;
    return ComputeLoadBalancingLoss(pooled(&s1, &s2, &r1, &r2), 1, 1).aux;
  };
  Router::Saved s1, s2;
  Routing r1, r2;
  const RouterStats stats = pooled(&s1, &s2, &r1, &r2);
  ASSERT_GT(std::min(MinTopKGap(r1.logits_TE, top_k), MinTopKGap(r2.logits_TE, top_k)), 1e-2);
  EXPECT_EQ(stats.rows, 13);
  const LoadBalancingLoss aux = ComputeLoadBalancingLoss(stats, 1, 1);
  const Tensor zero1 = Tensor::Zeros({8, top_k}, DType::kF64);
  const Tensor zero2 = Tensor::Zeros({5, top_k}, DType::kF64);
  const Tensor dx1 = first.Backward(zero1, aux.daux_dprob, 0, s1);
  const Tensor dx2 = second.Backward(zero2, aux.daux_dprob, 0, s2);
  std::vector<int64_t> checked;
  EXPECT_LT(GradientError(dx1, NumericalGradient(x1, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  EXPECT_LT(GradientError(dx2, NumericalGradient(x2, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  const Tensor dgate2 = second.weight().grad.Clone();
  EXPECT_LT(GradientError(dgate2, NumericalGradient(second.weight().value, loss, 1e-5, 0, &checked),
                          checked),
            kGradTolerance);
}

TEST(RouterTest, BalancedRoutingGivesAuxEqualTopK) {
  // f_e = K / E and P_e = 1 / E for every e: aux = E * E * (K / E) (1 / E) = K.
  RouterStats stats;
  stats.rows = 10;
  stats.choice_counts.assign(5, 10.0 * 2 / 5);
  stats.prob_sums.assign(5, 10.0 / 5);
  const LoadBalancingLoss aux = ComputeLoadBalancingLoss(stats, 0.01, 2.0);
  EXPECT_NEAR(aux.aux, 2.0, 1e-15);
  EXPECT_NEAR(aux.loss, 0.02, 1e-15);
  // coefficient * scale * E * f_e / N = 0.01 * 2 * 5 * 0.4 / 10.
  EXPECT_NEAR(aux.daux_dprob[3], 0.004, 1e-15);
}

TEST(RouterTest, GateGradientAccumulatesAndDxAccumulateAdds) {
  Router router("gate", 4, 3, 1, DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({3, 4}, DType::kF64, 61));
  const Tensor x = RandomTensor({5, 4}, DType::kF64, 62);
  const Tensor g = RandomTensor({5, 1}, DType::kF64, 63);
  Router::Saved saved;
  router.Forward(x, &saved);
  const Tensor dx = router.Backward(g, {}, 0.1, saved);
  const Tensor once = router.weight().grad.Clone();
  Tensor acc = RandomTensor({5, 4}, DType::kF64, 64);
  const Tensor before = acc.Clone();
  router.BackwardAccumulate(g, {}, 0.1, saved, &acc);
  for (int64_t i = 0; i < once.numel(); ++i) {
    EXPECT_NEAR(router.weight().grad.GetAsDouble(i), 2 * once.GetAsDouble(i), 1e-12);
  }
  for (int64_t i = 0; i < acc.numel(); ++i) {
    EXPECT_NEAR(acc.GetAsDouble(i), before.GetAsDouble(i) + dx.GetAsDouble(i), 1e-12);
  }
}

TEST(RouterTest, Float32MatchesFloat64) {
  const int64_t tokens = 33, hidden = 16, experts = 8, top_k = 2;
  Router r32("gate", hidden, experts, top_k, DType::kF32);
  Router r64("gate", hidden, experts, top_k, DType::kF64);
  const Tensor w = RandomTensor({experts, hidden}, DType::kF64, 71, 0.3);
  r64.weight().value.CopyFrom(w);
  r32.weight().value.CopyFrom(w.Cast(DType::kF32));
  const Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 72);
  Router::Saved s32, s64;
  const Routing a = r32.Forward(x.Cast(DType::kF32), &s32);
  const Routing b = r64.Forward(x, &s64);
  ASSERT_GT(MinTopKGap(b.logits_TE, top_k), 1e-4);
  for (int64_t i = 0; i < tokens * top_k; ++i) {
    ASSERT_EQ(a.ids_TK.data<int32_t>()[i], b.ids_TK.data<int32_t>()[i]);
  }
  EXPECT_EQ(a.logits_TE.dtype(), DType::kF32);
  EXPECT_LT(testing::MaxRelativeError(a.logits_TE, b.logits_TE), 1e-6);
  EXPECT_LT(testing::MaxRelativeError(a.weights_TK, b.weights_TK), 1e-6);
  EXPECT_NEAR(a.stats.z_sum, b.stats.z_sum, 1e-5 * b.stats.z_sum);
}

TEST(RouterDeathTest, BadOptionsAreNamed) {
  EXPECT_DEATH(Router("blk.gate", 8, 4, 5),
               "blk.gate: top_k must be in \\[1, num_experts = 4\\], got 5");
  EXPECT_DEATH(Router("blk.gate", 8, 4, 0), "top_k must be in");
  EXPECT_DEATH(Router("blk.gate", 8, 0, 1), "num_experts must be >= 1");
  EXPECT_DEATH(Router("blk.gate", 8, 4, 2, DType::kF32, Device::kCuda),
               "blk.gate: the CUDA MoE path is not built yet");
  EXPECT_DEATH(Router("blk.gate", 8, 4, 2, DType::kBF16), "kF32 or kF64");
}

TEST(RouterDeathTest, WrongWidthNamesTheLayer) {
  Router router("model.layers.3.block_sparse_moe.gate", 8, 4, 2);
  Router::Saved saved;
  EXPECT_DEATH(router.Forward(Tensor::Zeros({2, 7}, DType::kF32), &saved),
               "model.layers.3.block_sparse_moe.gate.weight: input must be \\[tokens, 8\\]");
}

}  // namespace
}  // namespace moe
