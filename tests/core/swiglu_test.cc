#include "core/layers/swiglu.h"

#include <cmath>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Smooth layer, finite differences in double with h = 1e-5: truncation
// O(h^2) ~ 1e-10, rounding ~ 1e-11.
constexpr double kGradTolerance = 1e-7;

TEST(SwigluTest, BackwardMatchesFiniteDifferences) {
  Swiglu swiglu;
  // std 2 puts gates well into both tails of the sigmoid.
  Tensor gate = RandomTensor({4, 9}, DType::kF64, 1, 2.0);
  Tensor up = RandomTensor({4, 9}, DType::kF64, 2);
  const Tensor dout = RandomTensor({4, 9}, DType::kF64, 3);
  auto loss = [&] {
    Swiglu::Saved saved;
    return Dot(swiglu.Forward(gate, up, &saved), dout);
  };
  Swiglu::Saved saved;
  swiglu.Forward(gate, up, &saved);
  const Swiglu::Grads grads = swiglu.Backward(dout, saved);

  std::vector<int64_t> checked;
  Tensor numeric_dgate = NumericalGradient(gate, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(grads.dgate, numeric_dgate, checked), kGradTolerance);
  Tensor numeric_dup = NumericalGradient(up, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(grads.dup, numeric_dup, checked), kGradTolerance);
}

// silu(0) = 0, silu(1) = 1 / (1 + e^-1), silu(-2) = -2 / (1 + e^2), and
// silu'(0) = 1/2; constants from a calculator, not from the formula under test.
TEST(SwigluTest, HandComputedSmallCase) {
  Swiglu swiglu;
  const Tensor gate = Tensor::FromVector({3}, {0, 1, -2}, DType::kF64);
  const Tensor up = Tensor::FromVector({3}, {3, 2, 1}, DType::kF64);
  Swiglu::Saved saved;
  const Tensor out = swiglu.Forward(gate, up, &saved);
  EXPECT_NEAR(out.GetAsDouble(0), 0.0, 1e-15);
  EXPECT_NEAR(out.GetAsDouble(1), 2 * 0.7310585786300049, 1e-15);
  EXPECT_NEAR(out.GetAsDouble(2), -0.2384058440442351, 1e-15);

  const Swiglu::Grads grads =
      swiglu.Backward(Tensor::FromVector({3}, {1, 1, 1}, DType::kF64), saved);
  EXPECT_NEAR(grads.dgate.GetAsDouble(0), 3 * 0.5, 1e-15);  // up * silu'(0)
  // silu'(1) = s (1 + 1 - s) with s = sigmoid(1).
  EXPECT_NEAR(grads.dgate.GetAsDouble(1), 2 * 0.9276705118714869, 1e-15);
  EXPECT_NEAR(grads.dup.GetAsDouble(0), 0.0, 1e-15);
  EXPECT_NEAR(grads.dup.GetAsDouble(1), 0.7310585786300049, 1e-15);
  EXPECT_NEAR(grads.dup.GetAsDouble(2), -0.2384058440442351, 1e-15);
}

// Far in the tails silu(g) is 0 (g << 0) or g (g >> 0), with no overflow
// to inf or NaN; a NaN gate stays NaN so that divergence is seen.
TEST(SwigluTest, SaturatedGatesGiveTheLimits) {
  Swiglu swiglu;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const Tensor gate = Tensor::FromVector({5}, {-1000, -100, 100, 1000, NAN}, dtype);
    const Tensor ones = Tensor::FromVector({5}, {1, 1, 1, 1, 1}, dtype);
    Swiglu::Saved saved;
    const Tensor out = swiglu.Forward(gate, ones, &saved);
    const Swiglu::Grads grads = swiglu.Backward(ones, saved);
    for (int64_t i : {0, 1}) {
      EXPECT_NEAR(out.GetAsDouble(i), 0.0, 1e-30) << DTypeName(dtype);
      EXPECT_NEAR(grads.dgate.GetAsDouble(i), 0.0, 1e-30) << DTypeName(dtype);
    }
    for (int64_t i : {2, 3}) {
      EXPECT_EQ(out.GetAsDouble(i), gate.GetAsDouble(i)) << DTypeName(dtype);
      EXPECT_EQ(grads.dgate.GetAsDouble(i), 1.0) << DTypeName(dtype);
    }
    EXPECT_TRUE(std::isnan(out.GetAsDouble(4))) << DTypeName(dtype);
    EXPECT_TRUE(std::isnan(grads.dgate.GetAsDouble(4))) << DTypeName(dtype);
  }
}

TEST(SwigluTest, Float32MatchesFloat64) {
  Swiglu swiglu;
  // Several OpenMP chunks plus a ragged tail.
  const Shape shape = {3, 4101};
  const Tensor gate = RandomTensor(shape, DType::kF64, 4, 2.0);
  const Tensor up = RandomTensor(shape, DType::kF64, 5);
  const Tensor dout = RandomTensor(shape, DType::kF64, 6);
  Swiglu::Saved s32, s64;
  EXPECT_LT(MaxRelativeError(swiglu.Forward(gate.Cast(DType::kF32), up.Cast(DType::kF32), &s32),
                             swiglu.Forward(gate, up, &s64)),
            1e-6);
  const Swiglu::Grads g32 = swiglu.Backward(dout.Cast(DType::kF32), s32);
  const Swiglu::Grads g64 = swiglu.Backward(dout, s64);
  EXPECT_LT(MaxRelativeError(g32.dgate, g64.dgate), 1e-6);
  EXPECT_LT(MaxRelativeError(g32.dup, g64.dup), 1e-6);
}

TEST(SwigluDeathTest, MismatchedInputs) {
  Swiglu swiglu;
  Swiglu::Saved saved;
  EXPECT_DEATH(swiglu.Forward(Tensor::Zeros({2, 8}, DType::kF32),
                              Tensor::Zeros({2, 7}, DType::kF32), &saved),
               "Swiglu: gate f32\\[2, 8\\] on cpu and up f32\\[2, 7\\] on cpu must have the same "
               "shape, dtype and device");
  EXPECT_DEATH(swiglu.Forward(Tensor::Zeros({2, 8}, DType::kF32),
                              Tensor::Zeros({2, 8}, DType::kF64), &saved),
               "Swiglu: gate f32\\[2, 8\\] on cpu and up f64\\[2, 8\\] on cpu");
}

TEST(SwigluDeathTest, WrongGradientShape) {
  Swiglu swiglu;
  Swiglu::Saved saved;
  swiglu.Forward(Tensor::Zeros({2, 8}, DType::kF32), Tensor::Zeros({2, 8}, DType::kF32), &saved);
  EXPECT_DEATH(swiglu.Backward(Tensor::Zeros({8, 2}, DType::kF32), saved),
               "Swiglu: dout f32\\[8, 2\\] on cpu does not match gate f32\\[2, 8\\] on cpu");
}

}  // namespace
}  // namespace moe
