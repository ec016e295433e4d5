#include "core/philox.h"

#include <gtest/gtest.h>

#include <cmath>

namespace moe {
namespace {

// Known-answer vectors of Philox4x32-10 from the Random123 distribution
// (kat_vectors): counter words (c0, c1, c2, c3), key words (k0, k1).
TEST(PhiloxTest, MatchesRandom123KnownAnswers) {
  const Philox zero(/*seed=*/0, /*stream=*/0);
  EXPECT_EQ(zero.Block(0),
            (std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
  const Philox ones(/*seed=*/0xffffffffffffffffull, /*stream=*/0xffffffffffffffffull);
  EXPECT_EQ(ones.Block(0xffffffffffffffffull),
            (std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
  // pi digits vector: ctr = 243f6a88 85a308d3 13198a2e 03707344, key = a4093822 299f31d0.
  const Philox pi(/*seed=*/0x299f31d0a4093822ull, /*stream=*/0x0370734413198a2eull);
  EXPECT_EQ(pi.Block(0x85a308d3243f6a88ull),
            (std::array<uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(PhiloxTest, NormalHasUnitMomentsAndUniformStaysInRange) {
  const Philox philox(42, 7);
  const int n = 200000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    const double x = philox.Normal(i);
    sum += x;
    sum_sq += x * x;
    const float u = philox.Uniform(i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum_sq / n, 1.0, 0.01);
}

TEST(PhiloxTest, StreamsAndSeedsAreIndependent) {
  EXPECT_NE(Philox(1, 0).Block(5), Philox(1, 1).Block(5));
  EXPECT_NE(Philox(1, 0).Block(5), Philox(2, 0).Block(5));
}

// A tensor initialised whole equals its shards initialised separately, bit for
// bit, for every split along every dimension.
TEST(PhiloxTest, ShardsDrawExactlyTheirSliceOfTheWhole) {
  const Shape global = {6, 4, 5};
  Tensor whole = Tensor::Empty(global, DType::kF32);
  InitNormal(&whole, ShardSlice::Whole(global), 1234, 9, 0.0, 0.02);
  for (int dim = 0; dim < 3; ++dim) {
    for (int64_t parts = 1; parts <= global[dim]; ++parts) {
      if (global[dim] % parts != 0) continue;
      const int64_t size = global[dim] / parts;
      for (int64_t p = 0; p < parts; ++p) {
        Shape local = global;
        local[dim] = size;
        ShardSlice slice{global, {0, 0, 0}};
        slice.offsets[dim] = p * size;
        Tensor shard = Tensor::Empty(local, DType::kF32);
        InitNormal(&shard, slice, 1234, 9, 0.0, 0.02);
        for (int64_t i = 0; i < shard.numel(); ++i) {
          int64_t c[3] = {i / (local[1] * local[2]), (i / local[2]) % local[1], i % local[2]};
          c[dim] += p * size;
          const int64_t g = (c[0] * global[1] + c[1]) * global[2] + c[2];
          ASSERT_EQ(shard.data<float>()[i], whole.data<float>()[g])
              << "dim " << dim << " parts " << parts << " part " << p << " element " << i;
        }
      }
    }
  }
}

TEST(PhiloxTest, UnevenSplitsMatchToo) {
  const Shape global = {7, 3};
  Tensor whole = Tensor::Empty(global, DType::kF64);
  InitUniform(&whole, ShardSlice::Whole(global), 5, 2, -1.0, 1.0);
  int64_t begin = 0;
  for (int64_t size : {2, 4, 1}) {
    Tensor shard = Tensor::Empty({size, 3}, DType::kF64);
    InitUniform(&shard, ShardSlice{global, {begin, 0}}, 5, 2, -1.0, 1.0);
    for (int64_t i = 0; i < shard.numel(); ++i) {
      ASSERT_EQ(shard.data<double>()[i], whole.data<double>()[begin * 3 + i]);
    }
    begin += size;
  }
}

}  // namespace
}  // namespace moe
