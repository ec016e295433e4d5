#include "core/optim/grad_clip.h"

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include <gtest/gtest.h>
#include <omp.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomTensor;

// The clip coefficient is max_norm / (norm + 1e-6), so a clipped gradient's
// norm is max_norm * norm / (norm + 1e-6): within 1e-6 relative of max_norm
// for norms >= 1, plus fp32 rounding of the scaled grads (~1e-7).
constexpr double kClipTolerance = 1e-6;

std::unique_ptr<Parameter> MakeParam(const char* name, const Shape& shape, DType dtype,
                                     uint64_t seed, double std = 1.0) {
  auto p = std::make_unique<Parameter>(name, shape, dtype, Device::kCpu);
  p->grad.CopyFrom(RandomTensor(shape, p->grad.dtype(), seed, std));
  return p;
}

double SumSquaresOf(const std::vector<Parameter*>& params) {
  double sum = 0;
  for (const Parameter* p : params) {
    for (int64_t i = 0; i < p->grad.numel(); ++i)
      sum += p->grad.GetAsDouble(i) * p->grad.GetAsDouble(i);
  }
  return sum;
}

TEST(GradClipTest, SquaredNormIsHandComputed) {
  Parameter a("a", {2, 2}, DType::kF32, Device::kCpu);
  Parameter b("b", {3}, DType::kF64, Device::kCpu);
  Parameter c("c", {2}, DType::kBF16, Device::kCpu);  // bf16 value, fp32 grad
  a.grad.CopyFrom(Tensor::FromVector({2, 2}, {1, 2, 3, 4}));
  b.grad.CopyFrom(Tensor::FromVector({3}, {0.5f, -1.5f, 2}, DType::kF64));
  c.grad.CopyFrom(Tensor::FromVector({2}, {-0.25f, 0.75f}));
  // 1 + 4 + 9 + 16 + 0.25 + 2.25 + 4 + 0.0625 + 0.5625, all exact in binary.
  EXPECT_EQ(GradSquaredNorm({&a, &b, &c}), 37.125);
  EXPECT_EQ(GradSquaredNorm({}), 0.0);
}

TEST(GradClipTest, ClippedGradientsHaveMaxNorm) {
  auto w = MakeParam("w", {40, 30}, DType::kF32, 1);
  auto n = MakeParam("n", {30}, DType::kBF16, 2);
  auto d = MakeParam("d", {17}, DType::kF64, 3);
  const std::vector<Parameter*> params = {w.get(), n.get(), d.get()};
  const double expected_norm = std::sqrt(SumSquaresOf(params));  // ~35
  const Tensor w_before = w->grad.Clone();
  const double max_norm = 1.0;

  const double norm = ClipGradNormLocal(params, max_norm);
  EXPECT_NEAR(norm, expected_norm, 1e-12 * expected_norm);
  EXPECT_NEAR(std::sqrt(SumSquaresOf(params)), max_norm, kClipTolerance * max_norm);
  // Every element is scaled by the same factor: direction unchanged.
  const double factor = max_norm / (norm + 1e-6);
  for (int64_t i = 0; i < w_before.numel(); ++i) {
    ASSERT_EQ(w->grad.data<float>()[i],
              static_cast<float>(w_before.data<float>()[i] * static_cast<float>(factor)));
  }
}

TEST(GradClipTest, NoChangeBelowMaxNorm) {
  auto w = MakeParam("w", {8, 8}, DType::kF32, 4, 0.1);  // norm ~0.8
  const Tensor before = w->grad.Clone();
  const double norm = ClipGradNormLocal({w.get()}, 1.0);
  EXPECT_NEAR(norm, std::sqrt(SumSquaresOf({w.get()})), 1e-12);
  EXPECT_LT(norm, 1.0);
  for (int64_t i = 0; i < before.numel(); ++i) {
    ASSERT_EQ(w->grad.data<float>()[i], before.data<float>()[i]);
  }
}

// Megatron's rule clips when max_norm / (norm + 1e-6) < 1, so a norm equal to
// max_norm is scaled by 5 / 5.000001.
TEST(GradClipTest, NormEqualToMaxNormIsScaledByTheEpsilonRule) {
  Parameter p("p", {2}, DType::kF64, Device::kCpu);
  p.grad.CopyFrom(Tensor::FromVector({2}, {3, 4}, DType::kF64));
  EXPECT_EQ(ClipGradNormLocal({&p}, 5.0), 5.0);
  EXPECT_DOUBLE_EQ(p.grad.GetAsDouble(0), 3 * (5.0 / (5.0 + 1e-6)));
}

// The squared norm of a sharded model is the sum of the shards' squared norms
// (what the model-parallel all-reduce computes); clipping each shard with the
// total gives the same gradients as clipping everything at once.
TEST(GradClipTest, ShardsClippedWithTheTotalMatchLocalClipping) {
  auto a1 = MakeParam("a", {10, 6}, DType::kF32, 5);
  auto b1 = MakeParam("b", {6}, DType::kF32, 6);
  auto a2 = MakeParam("a", {10, 6}, DType::kF32, 5);
  auto b2 = MakeParam("b", {6}, DType::kF32, 6);
  const double local = ClipGradNormLocal({a1.get(), b1.get()}, 0.5);
  const double total = GradSquaredNorm({a2.get()}) + GradSquaredNorm({b2.get()});
  EXPECT_EQ(ClipGradNorm({a2.get()}, 0.5, total), local);
  EXPECT_EQ(ClipGradNorm({b2.get()}, 0.5, total), local);
  for (int64_t i = 0; i < a1->grad.numel(); ++i) {
    ASSERT_EQ(a1->grad.data<float>()[i], a2->grad.data<float>()[i]);
  }
  for (int64_t i = 0; i < b1->grad.numel(); ++i) {
    ASSERT_EQ(b1->grad.data<float>()[i], b2->grad.data<float>()[i]);
  }
}

TEST(GradClipTest, NonFiniteNormIsReturnedAndGradsAreLeftAlone) {
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto w = MakeParam("w", {4, 4}, DType::kF32, 7, 10.0);
    w->grad.data<float>()[5] = bad;
    const Tensor before = w->grad.Clone();
    const double norm = ClipGradNormLocal({w.get()}, 1.0);
    if (std::isnan(bad)) {
      EXPECT_TRUE(std::isnan(norm));
    } else {
      EXPECT_EQ(norm, std::numeric_limits<double>::infinity());
    }
    for (int64_t i = 0; i < before.numel(); ++i) {
      if (i == 5) continue;
      ASSERT_EQ(w->grad.data<float>()[i], before.data<float>()[i]) << i;
    }
  }
}

// Blocks of fixed size summed in block order: the same bits on any number of
// threads.
TEST(GradClipTest, SquaredNormDoesNotDependOnThreadCount) {
  auto w = MakeParam("w", {300, 1000}, DType::kF32, 8);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = GradSquaredNorm({w.get()});
  omp_set_num_threads(3);
  const double three = GradSquaredNorm({w.get()});
  omp_set_num_threads(threads);
  EXPECT_EQ(one, three);
  EXPECT_NEAR(one, SumSquaresOf({w.get()}), 1e-10 * one);
}

TEST(GradClipDeathTest, NonPositiveMaxNorm) {
  auto w = MakeParam("w", {4}, DType::kF32, 9);
  EXPECT_DEATH(ClipGradNormLocal({w.get()}, 0.0), "ClipGradNorm: max_norm must be finite and > 0");
}

TEST(GradClipDeathTest, NegativeSquaredNorm) {
  auto w = MakeParam("w", {4}, DType::kF32, 10);
  EXPECT_DEATH(ClipGradNorm({w.get()}, 1.0, -1.0), "total_squared_norm must be >= 0");
}

TEST(GradClipDeathTest, IntegerGradientNamesTheParameter) {
  Parameter p("layers.0.w", {4}, DType::kF32, Device::kCpu);
  p.grad = Tensor::Zeros({4}, DType::kI32);
  EXPECT_DEATH(GradSquaredNorm({&p}), "GradSquaredNorm: layers.0.w grad must be f32 or f64");
}

}  // namespace
}  // namespace moe
