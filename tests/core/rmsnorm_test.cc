#include "core/layers/rmsnorm.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Finite differences in double: truncation O(h^2) ~ 1e-10 and rounding
// ~ 1e-16 / h ~ 1e-11 relative, so 1e-7 leaves a wide margin yet catches any
// wrong term.
constexpr double kGradTolerance = 1e-7;

TEST(RmsNormTest, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 5, dim = 24;
  RmsNorm norm("norm", dim, 1e-5, DType::kF64);
  norm.weight().value.CopyFrom(RandomTensor({dim}, DType::kF64, 1));
  Tensor x = RandomTensor({rows, dim}, DType::kF64, 2);
  const Tensor dy = RandomTensor({rows, dim}, DType::kF64, 3);

  // loss = <forward(x), dy>, whose gradient is backward(dy).
  auto loss = [&] {
    RmsNorm::Saved saved;
    return Dot(norm.Forward(x, &saved), dy);
  };
  RmsNorm::Saved saved;
  norm.Forward(x, &saved);
  const Tensor dx = norm.Backward(dy, saved);
  const Tensor dw = norm.weight().grad.Clone();

  std::vector<int64_t> checked;
  Tensor numeric_dx = NumericalGradient(x, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dx, numeric_dx, checked), kGradTolerance);
  Tensor numeric_dw = NumericalGradient(norm.weight().value, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dw, numeric_dw, checked), kGradTolerance);
}

TEST(RmsNormTest, WeightGradientAccumulates) {
  RmsNorm norm("norm", 8, 1e-5, DType::kF64);
  Tensor x = RandomTensor({3, 8}, DType::kF64, 4);
  Tensor dy = RandomTensor({3, 8}, DType::kF64, 5);
  RmsNorm::Saved saved;
  norm.Forward(x, &saved);
  norm.Backward(dy, saved);
  const Tensor once = norm.weight().grad.Clone();
  norm.Backward(dy, saved);
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(norm.weight().grad.GetAsDouble(i), 2 * once.GetAsDouble(i), 1e-12);
  }
}

TEST(RmsNormTest, Float32MatchesFloat64) {
  const int64_t rows = 7, dim = 96;
  RmsNorm norm32("n", dim, 1e-6, DType::kF32);
  RmsNorm norm64("n", dim, 1e-6, DType::kF64);
  const Tensor w = RandomTensor({dim}, DType::kF64, 6);
  norm64.weight().value.CopyFrom(w);
  norm32.weight().value.CopyFrom(w.Cast(DType::kF32));
  const Tensor x = RandomTensor({rows, dim}, DType::kF64, 7);
  RmsNorm::Saved s32, s64;
  const Tensor y32 = norm32.Forward(x.Cast(DType::kF32), &s32);
  const Tensor y64 = norm64.Forward(x, &s64);
  EXPECT_LT(MaxRelativeError(y32, y64), 1e-6);
}

TEST(RmsNormDeathTest, WrongWidthNamesTheLayer) {
  RmsNorm norm("model.norm", 8, 1e-5);
  RmsNorm::Saved saved;
  EXPECT_DEATH(norm.Forward(Tensor::Zeros({2, 7}, DType::kF32), &saved),
               "model.norm.weight: input must be \\[..., 8\\]");
}

}  // namespace
}  // namespace moe
