#include "core/layers/rope.h"

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

// RoPE is linear in x: finite differences are exact up to rounding
// (~1e-16 / h ~ 1e-11 relative).
constexpr double kGradTolerance = 1e-7;

TEST(RopeTest, BackwardMatchesFiniteDifferences) {
  const int64_t batch = 2, seq = 3, heads = 2, head_dim = 8, offset = 2;
  // A small theta spreads the angles of all frequencies over whole turns.
  Rope rope(head_dim, 8, 10.0, DType::kF64);
  Tensor x = RandomTensor({batch, seq, heads, head_dim}, DType::kF64, 1);
  const Tensor dy = RandomTensor({batch, seq, heads, head_dim}, DType::kF64, 2);
  auto loss = [&] { return Dot(rope.Forward(x, offset), dy); };
  const Tensor dx = rope.Backward(dy, offset);
  std::vector<int64_t> checked;
  Tensor numeric = NumericalGradient(x, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dx, numeric, checked), kGradTolerance);
}

// head_dim 4, theta 100: inv_freq = [1, 100^(-1/2)] = [1, 0.1]. At position 1
// the pairs (x0, x2) and (x1, x3) turn by 1 and 0.1 radians.
TEST(RopeTest, HandComputedSmallCase) {
  Rope rope(4, 2, 100.0, DType::kF64);
  const Tensor x = Tensor::FromVector({1, 1, 1, 4}, {1, 2, 3, 4}, DType::kF64);
  const Tensor y = rope.Forward(x, /*pos_offset=*/1);
  EXPECT_NEAR(y.GetAsDouble(0), 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(y.GetAsDouble(1), 2 * std::cos(0.1) - 4 * std::sin(0.1), 1e-15);
  EXPECT_NEAR(y.GetAsDouble(2), 3 * std::cos(1.0) + 1 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(y.GetAsDouble(3), 4 * std::cos(0.1) + 2 * std::sin(0.1), 1e-15);
  // Tables are [positions, head_dim / 2]; row 0 is the identity rotation.
  EXPECT_EQ(rope.cos().shape(), (Shape{2, 2}));
  EXPECT_EQ(rope.cos().GetAsDouble(0), 1.0);
  EXPECT_EQ(rope.sin().GetAsDouble(1), 0.0);
  EXPECT_NEAR(rope.sin().GetAsDouble(3), std::sin(0.1), 1e-16);
}

TEST(RopeTest, PositionZeroIsTheIdentity) {
  Rope rope(16, 4, 10000.0, DType::kF32);
  const Tensor x = RandomTensor({3, 1, 2, 16}, DType::kF32, 3);
  EXPECT_EQ(rope.Forward(x, 0).ToFloatVector(), x.ToFloatVector());
  EXPECT_EQ(rope.Backward(x, 0).ToFloatVector(), x.ToFloatVector());
}

TEST(RopeTest, RotationPreservesEachPairNorm) {
  const int64_t head_dim = 12, half = head_dim / 2;
  Rope rope(head_dim, 64, 10000.0, DType::kF64);
  const Tensor x = RandomTensor({2, 5, 3, head_dim}, DType::kF64, 4);
  const Tensor y = rope.Forward(x, 40);
  for (int64_t base = 0; base < x.numel(); base += head_dim) {
    for (int64_t i = 0; i < half; ++i) {
      const double nx = std::hypot(x.GetAsDouble(base + i), x.GetAsDouble(base + i + half));
      const double ny = std::hypot(y.GetAsDouble(base + i), y.GetAsDouble(base + i + half));
      EXPECT_NEAR(ny, nx, 1e-14 * nx) << "pair " << i << " of vector at " << base;
    }
  }
}

TEST(RopeTest, BackwardInvertsForward) {
  Rope rope(8, 16, 500.0, DType::kF64);
  const Tensor x = RandomTensor({2, 4, 3, 8}, DType::kF64, 5);
  EXPECT_LT(MaxRelativeError(rope.Backward(rope.Forward(x, 7), 7), x), 1e-15);
}

// A chunk starting at position p (a continued sequence, a context-parallel
// shard) must be rotated exactly as those rows of the whole sequence.
TEST(RopeTest, OffsetEqualsSlicingALongerSequence) {
  const int64_t seq = 10, heads = 3, head_dim = 8, begin = 4, len = 5;
  Rope rope(head_dim, 16, 10000.0, DType::kF32);
  const Tensor x = RandomTensor({1, seq, heads, head_dim}, DType::kF32, 6);
  const Tensor y = rope.Forward(x, 0);
  const int64_t row = heads * head_dim;
  const Shape chunk = {1, len, heads, head_dim};
  EXPECT_EQ(rope.Forward(x.View(begin * row, chunk), begin).ToFloatVector(),
            y.View(begin * row, chunk).ToFloatVector());
  const Tensor dx = rope.Backward(x, 0);
  EXPECT_EQ(rope.Backward(x.View(begin * row, chunk), begin).ToFloatVector(),
            dx.View(begin * row, chunk).ToFloatVector());
}

TEST(RopeTest, Float32MatchesFloat64) {
  // Positions up to 4096: the fp32 table entries come from double angles,
  // so each is within half an ulp of the true cos/sin.
  const int64_t head_dim = 64;
  Rope rope32(head_dim, 4096, 1e6, DType::kF32);
  Rope rope64(head_dim, 4096, 1e6, DType::kF64);
  const Tensor x = RandomTensor({2, 16, 4, head_dim}, DType::kF64, 7);
  EXPECT_LT(MaxRelativeError(rope32.Forward(x.Cast(DType::kF32), 4080), rope64.Forward(x, 4080)),
            1e-6);
  EXPECT_LT(MaxRelativeError(rope32.Backward(x.Cast(DType::kF32), 4080), rope64.Backward(x, 4080)),
            1e-6);
}

TEST(RopeDeathTest, PositionsPastTheTable) {
  Rope rope(8, 16, 10000.0);
  const Tensor x = Tensor::Zeros({1, 6, 2, 8}, DType::kF32);
  EXPECT_DEATH(rope.Forward(x, 12),
               "Rope: positions \\[12, 18\\) do not fit the table of max_positions 16");
  EXPECT_DEATH(rope.Backward(x, 11), "Rope: positions \\[11, 17\\) do not fit");
  EXPECT_DEATH(rope.Forward(x, -1), "Rope: positions \\[-1, 5\\) do not fit");
}

TEST(RopeDeathTest, BadShapes) {
  Rope rope(8, 16, 10000.0);
  EXPECT_DEATH(rope.Forward(Tensor::Zeros({1, 6, 2, 6}, DType::kF32)),
               "Rope: x must be \\[batch, seq, heads, 8\\], got f32\\[1, 6, 2, 6\\]");
  EXPECT_DEATH(rope.Backward(Tensor::Zeros({6, 2, 8}, DType::kF32)),
               "Rope: dy must be \\[batch, seq, heads, 8\\], got f32\\[6, 2, 8\\]");
  EXPECT_DEATH(rope.Forward(Tensor::Zeros({1, 6, 2, 8}, DType::kF64)),
               "Rope: x f64\\[1, 6, 2, 8\\] on cpu does not match the layer's f32 on cpu");
  EXPECT_DEATH(Rope(7, 16, 10000.0), "Rope: head_dim must be positive and even, got 7");
}

}  // namespace
}  // namespace moe
