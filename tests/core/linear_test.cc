#include "core/layers/linear.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Finite differences in double on a function linear in each input: the
// truncation error vanishes and rounding is ~1e-16 / h ~ 1e-11 relative.
constexpr double kGradTolerance = 1e-7;

TEST(LinearTest, BackwardMatchesFiniteDifferences) {
  const int64_t in = 5, out = 4;
  Linear linear("proj", in, out, DType::kF64);
  linear.weight().value.CopyFrom(RandomTensor({out, in}, DType::kF64, 1));
  // Three dims: the leading [2, 3] are flattened into one GEMM.
  Tensor x = RandomTensor({2, 3, in}, DType::kF64, 2);
  const Tensor dy = RandomTensor({2, 3, out}, DType::kF64, 3);

  // loss = <forward(x), dy>, whose gradient is backward(dy).
  auto loss = [&] {
    Linear::Saved saved;
    return Dot(linear.Forward(x, &saved), dy);
  };
  Linear::Saved saved;
  const Tensor y = linear.Forward(x, &saved);
  EXPECT_EQ(y.shape(), (Shape{2, 3, out}));
  const Tensor dx = linear.Backward(dy, saved);
  EXPECT_EQ(dx.shape(), x.shape());
  const Tensor dw = linear.weight().grad.Clone();

  std::vector<int64_t> checked;
  Tensor numeric_dx = NumericalGradient(x, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dx, numeric_dx, checked), kGradTolerance);
  Tensor numeric_dw = NumericalGradient(linear.weight().value, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dw, numeric_dw, checked), kGradTolerance);
}

// y = x W^T on a 2x3 input with numbers worked by hand; every value is exact
// in fp32.
TEST(LinearTest, HandComputedSmallCase) {
  Linear linear("proj", 3, 2, DType::kF32);
  linear.weight().value.CopyFrom(Tensor::FromVector({2, 3}, {1, 0, -1, 0.5, 1, 2}));
  const Tensor x = Tensor::FromVector({2, 3}, {1, 2, 3, 4, 5, 6});
  Linear::Saved saved;
  const Tensor y = linear.Forward(x, &saved);
  // Row 0: [1 - 3, 0.5 + 2 + 6]; row 1: [4 - 6, 2 + 5 + 12].
  EXPECT_EQ(y.ToFloatVector(), (std::vector<float>{-2, 8.5, -2, 19}));

  const Tensor dy = Tensor::FromVector({2, 2}, {1, 2, -1, 1});
  const Tensor dx = linear.Backward(dy, saved);
  // dx = dy W: [1*w0 + 2*w1, -w0 + w1].
  EXPECT_EQ(dx.ToFloatVector(), (std::vector<float>{2, 2, 3, -0.5, 1, 3}));
  // dW = dy^T x: [x0 - x1, 2 x0 + x1].
  EXPECT_EQ(linear.weight().grad.ToFloatVector(), (std::vector<float>{-3, -3, -3, 6, 9, 12}));
}

TEST(LinearTest, WeightGradientAccumulates) {
  Linear linear("proj", 6, 3, DType::kF64);
  linear.weight().value.CopyFrom(RandomTensor({3, 6}, DType::kF64, 4));
  const Tensor x = RandomTensor({4, 6}, DType::kF64, 5);
  const Tensor dy = RandomTensor({4, 3}, DType::kF64, 6);
  Linear::Saved saved;
  linear.Forward(x, &saved);
  linear.Backward(dy, saved);
  const Tensor once = linear.weight().grad.Clone();
  linear.Backward(dy, saved);
  for (int64_t i = 0; i < once.numel(); ++i) {
    EXPECT_NEAR(linear.weight().grad.GetAsDouble(i), 2 * once.GetAsDouble(i), 1e-12);
  }
}

TEST(LinearTest, Float32MatchesFloat64) {
  const int64_t rows = 33, in = 96, out = 80;
  Linear linear32("proj", in, out, DType::kF32);
  Linear linear64("proj", in, out, DType::kF64);
  const Tensor w = RandomTensor({out, in}, DType::kF64, 7, 0.1);
  linear64.weight().value.CopyFrom(w);
  linear32.weight().value.CopyFrom(w.Cast(DType::kF32));
  const Tensor x = RandomTensor({rows, in}, DType::kF64, 8);
  const Tensor dy = RandomTensor({rows, out}, DType::kF64, 9);
  Linear::Saved s32, s64;
  // fp32 dot products of length <= 96 with inputs rounded to fp32: a few
  // ulps of the output scale.
  EXPECT_LT(
      MaxRelativeError(linear32.Forward(x.Cast(DType::kF32), &s32), linear64.Forward(x, &s64)),
      1e-5);
  EXPECT_LT(
      MaxRelativeError(linear32.Backward(dy.Cast(DType::kF32), s32), linear64.Backward(dy, s64)),
      1e-5);
  EXPECT_LT(MaxRelativeError(linear32.weight().grad, linear64.weight().grad), 1e-5);
}

TEST(LinearTest, EmptyBatchLeavesGradientUnchanged) {
  Linear linear("proj", 4, 3, DType::kF64);
  linear.weight().value.CopyFrom(RandomTensor({3, 4}, DType::kF64, 10));
  Linear::Saved saved;
  const Tensor y = linear.Forward(Tensor::Zeros({0, 4}, DType::kF64), &saved);
  EXPECT_EQ(y.shape(), (Shape{0, 3}));
  linear.Backward(Tensor::Zeros({0, 3}, DType::kF64), saved);
  for (int64_t i = 0; i < 12; ++i) EXPECT_EQ(linear.weight().grad.GetAsDouble(i), 0.0);
}

TEST(LinearDeathTest, WrongInputWidthNamesTheLayer) {
  Linear linear("model.layers.0.self_attn.q_proj", 8, 4);
  Linear::Saved saved;
  EXPECT_DEATH(linear.Forward(Tensor::Zeros({2, 7}, DType::kF32), &saved),
               "model.layers.0.self_attn.q_proj.weight: input must be \\[..., 8\\], got "
               "f32\\[2, 7\\]");
}

TEST(LinearDeathTest, DtypeMismatchNamesBoth) {
  Linear linear("proj", 8, 4, DType::kF32);
  Linear::Saved saved;
  EXPECT_DEATH(linear.Forward(Tensor::Zeros({2, 8}, DType::kF64), &saved),
               "proj.weight: input f64\\[2, 8\\] on cpu vs weight f32\\[4, 8\\] on cpu");
}

TEST(LinearDeathTest, WrongGradientShape) {
  Linear linear("proj", 8, 4, DType::kF32);
  Linear::Saved saved;
  linear.Forward(Tensor::Zeros({2, 8}, DType::kF32), &saved);
  EXPECT_DEATH(linear.Backward(Tensor::Zeros({2, 8}, DType::kF32), saved),
               "proj.weight: dy must be f32\\[2, 4\\] on cpu, got f32\\[2, 8\\]");
}

TEST(LinearDeathTest, NonPositiveSize) {
  EXPECT_DEATH(Linear("proj", 0, 4), "proj.weight: in_features and out_features must be positive");
}

}  // namespace
}  // namespace moe
