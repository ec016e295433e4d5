#include "moe/permutation.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomTensor;

Tensor Ids(int64_t tokens, int64_t top_k, const std::vector<int32_t>& values) {
  Tensor t = Tensor::Empty({tokens, top_k}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

// x[t] = (t + 1, 10 (t + 1)): every row says which token it came from.
Tensor TokenRows(int64_t tokens, DType dtype) {
  Tensor x = Tensor::Empty({tokens, 2}, dtype);
  for (int64_t t = 0; t < tokens; ++t) {
    x.SetFromDouble(2 * t, t + 1.0);
    x.SetFromDouble(2 * t + 1, 10.0 * (t + 1));
  }
  return x;
}

TEST(PermutationTest, HandWorkedWithAnExpertWithoutTokens) {
  // Pairs p = t * 2 + j and their experts:
  //   p: 0 1 2 3 4 5 6 7
  //   e: 2 0 0 2 2 3 0 2      (expert 1 gets nothing)
  const Permutation p = BuildPermutation(Ids(4, 2, {2, 0, 0, 2, 2, 3, 0, 2}), 4);
  EXPECT_EQ(p.num_tokens, 4);
  EXPECT_EQ(p.top_k, 2);
  EXPECT_EQ(p.num_rows(), 8);
  EXPECT_EQ(p.expert_offsets, (std::vector<int64_t>{0, 3, 3, 7, 8}));
  EXPECT_EQ(p.expert_rows(1), 0);
  // Stable: inside each expert, pairs in increasing order.
  EXPECT_EQ(p.row_to_pair, (std::vector<int32_t>{1, 2, 6, 0, 3, 4, 7, 5}));
  EXPECT_EQ(p.pair_to_row, (std::vector<int32_t>{3, 0, 1, 4, 5, 7, 2, 6}));

  const Tensor rows = PermuteRows(TokenRows(4, DType::kF64), p);
  // Row r holds token row_to_pair[r] / 2.
  const std::vector<double> tokens_of_rows = {0, 1, 3, 0, 1, 2, 3, 2};
  ASSERT_EQ(rows.shape(), (Shape{8, 2}));
  for (int64_t r = 0; r < 8; ++r) {
    EXPECT_EQ(rows.GetAsDouble(2 * r), tokens_of_rows[r] + 1) << "row " << r;
    EXPECT_EQ(rows.GetAsDouble(2 * r + 1), 10 * (tokens_of_rows[r] + 1)) << "row " << r;
  }
}

TEST(PermutationTest, AllTokensOnOneExpert) {
  const Permutation p = BuildPermutation(Ids(3, 1, {1, 1, 1}), 3);
  EXPECT_EQ(p.expert_offsets, (std::vector<int64_t>{0, 0, 3, 3}));
  EXPECT_EQ(p.row_to_pair, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(p.pair_to_row, (std::vector<int32_t>{0, 1, 2}));
  const Tensor x = TokenRows(3, DType::kF32);
  const Tensor rows = PermuteRows(x, p);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(rows.GetAsDouble(i), x.GetAsDouble(i));
}

TEST(PermutationTest, ScaledGatherAndWeightedUnpermute) {
  const Permutation p = BuildPermutation(Ids(3, 2, {1, 0, 0, 2, 2, 1}), 3);
  const Tensor x = TokenRows(3, DType::kF64);
  const Tensor scale =
      Tensor::FromVector({3, 2}, {0.5f, 0.25f, 2.0f, -1.0f, 3.0f, 0.125f}, DType::kF64);
  // Scaled gather: row of pair q is scale[q] * x[q / 2].
  const Tensor scaled = PermuteRows(x, p, scale);
  for (int64_t q = 0; q < 6; ++q) {
    const int64_t r = p.pair_to_row[q];
    EXPECT_EQ(scaled.GetAsDouble(2 * r), scale.GetAsDouble(q) * x.GetAsDouble(2 * (q / 2)));
  }
  // Weighted unpermute of the plain gather: y[t] = (scale[t,0] + scale[t,1]) x[t].
  const Tensor y = UnpermuteSum(PermuteRows(x, p), p, scale);
  const Tensor sum = UnpermuteSum(PermuteRows(x, p), p);
  for (int64_t t = 0; t < 3; ++t) {
    const double s = scale.GetAsDouble(2 * t) + scale.GetAsDouble(2 * t + 1);
    for (int64_t h = 0; h < 2; ++h) {
      EXPECT_DOUBLE_EQ(y.GetAsDouble(2 * t + h), s * x.GetAsDouble(2 * t + h));
      EXPECT_EQ(sum.GetAsDouble(2 * t + h), 2 * x.GetAsDouble(2 * t + h));
    }
  }
}

TEST(PermutationTest, UnpermuteIsTheAdjointOfPermute) {
  // <PermuteRows(x, s), r> = <x, UnpermuteSum(r, s)> for every x, r, s: the
  // pair of functions are each other's backward.
  for (DType dtype : {DType::kF32, DType::kF64}) {
    const Tensor ids = testing::RandomIds({9, 3}, 5, 1);  // repeats are fine here
    const Permutation p = BuildPermutation(ids, 5);
    const Tensor x = RandomTensor({9, 7}, dtype, 2);
    const Tensor r = RandomTensor({27, 7}, dtype, 3);
    const Tensor s = RandomTensor({9, 3}, dtype, 4);
    const double lhs = testing::Dot(PermuteRows(x, p, s), r);
    const double rhs = testing::Dot(x, UnpermuteSum(r, p, s));
    EXPECT_NEAR(lhs, rhs, 1e-4 * std::abs(lhs) + 1e-9);
  }
}

TEST(PermutationTest, RowDotsMatchDirectProducts) {
  const Tensor ids = Ids(2, 2, {1, 0, 0, 1});
  const Permutation p = BuildPermutation(ids, 2);
  const Tensor a = RandomTensor({2, 11}, DType::kF64, 5);
  const Tensor rows = RandomTensor({4, 11}, DType::kF64, 6);
  const Tensor dots = RowDots(a, rows, p);
  for (int64_t q = 0; q < 4; ++q) {
    double expected = 0;
    for (int64_t h = 0; h < 11; ++h) {
      expected += a.GetAsDouble((q / 2) * 11 + h) * rows.GetAsDouble(p.pair_to_row[q] * 11 + h);
    }
    EXPECT_NEAR(dots.GetAsDouble(q), expected, 1e-12);
  }
}

TEST(PermutationDeathTest, ExpertIdOutOfRangeNamesTheToken) {
  EXPECT_DEATH(BuildPermutation(Ids(2, 2, {0, 1, 4, 0}), 4),
               "expert id 4 of token 1 choice 0 is outside \\[0, 4\\)");
  EXPECT_DEATH(BuildPermutation(Ids(1, 1, {-2}), 4), "expert id -2");
}

TEST(PermutationTest, UnroutedPairsAreNoRowsAndCombineToNothing) {
  // Token 0 uses both slots, token 1 one, token 2 none (every pair dropped).
  const Permutation p = BuildPermutation(Ids(3, 2, {1, 0, kUnrouted, 1, kUnrouted, kUnrouted}), 2);
  EXPECT_EQ(p.num_pairs(), 6);
  EXPECT_EQ(p.num_rows(), 3);
  EXPECT_EQ(p.expert_offsets, (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(p.row_to_pair, (std::vector<int32_t>{1, 0, 3}));
  EXPECT_EQ(p.pair_to_row, (std::vector<int32_t>{1, 0, -1, 2, -1, -1}));
  const Tensor x = TokenRows(3, DType::kF64);
  const Tensor scale = Tensor::Empty({3, 2}, DType::kF64);
  for (int64_t i = 0; i < 6; ++i) scale.data<double>()[i] = 0.5 + i;
  const Tensor rows = PermuteRows(x, p, scale);
  const Tensor y = UnpermuteSum(rows, p, scale);
  // y[0] = (0.5^2 + 1.5^2) x[0]; y[1] = 3.5^2 x[1]; y[2] = 0.
  EXPECT_DOUBLE_EQ(y.GetAsDouble(0), (0.25 + 2.25) * 1);
  EXPECT_DOUBLE_EQ(y.GetAsDouble(2), 12.25 * 2);
  EXPECT_EQ(y.GetAsDouble(4), 0.0);
  EXPECT_EQ(y.GetAsDouble(5), 0.0);
  const Tensor dots = RowDots(x, rows, p);
  EXPECT_EQ(dots.GetAsDouble(2), 0.0);
  EXPECT_DOUBLE_EQ(dots.GetAsDouble(3), 3.5 * (4 + 400));
}

TEST(PermutationTest, PadToCapacityGivesEveryExpertCapacityRows) {
  const Permutation p = BuildPermutation(Ids(3, 1, {1, 1, kUnrouted}), 3);
  const Permutation padded = PadToCapacity(p, 2);
  EXPECT_EQ(padded.expert_offsets, (std::vector<int64_t>{0, 2, 4, 6}));
  EXPECT_EQ(padded.row_to_pair, (std::vector<int32_t>{-1, -1, 0, 1, -1, -1}));
  EXPECT_EQ(padded.pair_to_row, (std::vector<int32_t>{2, 3, -1}));
  const Tensor x = TokenRows(3, DType::kF32);
  const Tensor rows = PermuteRows(x, padded);
  for (int64_t r : {0, 1, 4, 5}) EXPECT_EQ(rows.GetAsDouble(2 * r), 0.0) << "padding row " << r;
  EXPECT_EQ(rows.GetAsDouble(2 * 3), 2.0);
  const Tensor y = UnpermuteSum(rows, padded);
  EXPECT_EQ(y.GetAsDouble(2), 2.0);
  EXPECT_EQ(y.GetAsDouble(4), 0.0);
  EXPECT_DEATH(PadToCapacity(p, 1), "expert 1 holds 2 rows, more than the capacity 1");
}

}  // namespace
}  // namespace moe
