#include "core/layers/embedding.h"

#include <omp.h>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomIds;
using testing::RandomTensor;

// The loss is linear in the table, so finite differences are exact up to
// rounding (~1e-16 / h ~ 1e-11 relative).
constexpr double kGradTolerance = 1e-7;

Tensor Ids(const Shape& shape, const std::vector<int32_t>& values) {
  Tensor t = Tensor::Empty(shape, DType::kI32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

TEST(EmbeddingTest, BackwardMatchesFiniteDifferencesWithRepeatedIds) {
  const int64_t vocab = 7, dim = 5;
  Embedding embedding("embed_tokens", vocab, dim, DType::kF64);
  embedding.weight().value.CopyFrom(RandomTensor({vocab, dim}, DType::kF64, 1));
  // Id 3 three times, id 0 twice, ids 1 and 6 never: both repeats and
  // untouched rows are covered.
  const Tensor ids = Ids({2, 4}, {3, 0, 3, 5, 2, 3, 0, 4});
  const Tensor dout = RandomTensor({2, 4, dim}, DType::kF64, 2);
  auto loss = [&] {
    Embedding::Saved saved;
    return Dot(embedding.Forward(ids, &saved), dout);
  };
  Embedding::Saved saved;
  const Tensor out = embedding.Forward(ids, &saved);
  EXPECT_EQ(out.shape(), (Shape{2, 4, dim}));
  embedding.Backward(dout, saved);
  const Tensor dw = embedding.weight().grad.Clone();

  std::vector<int64_t> checked;
  Tensor numeric = NumericalGradient(embedding.weight().value, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dw, numeric, checked), kGradTolerance);
  for (int64_t i = 0; i < dim; ++i) {
    EXPECT_EQ(dw.GetAsDouble(1 * dim + i), 0.0) << "row 1 has no token";
    EXPECT_EQ(dw.GetAsDouble(6 * dim + i), 0.0) << "row 6 has no token";
  }
}

TEST(EmbeddingTest, HandComputedSmallCase) {
  Embedding embedding("emb", 3, 2, DType::kF32);
  embedding.weight().value.CopyFrom(Tensor::FromVector({3, 2}, {1, 2, 3, 4, 5, 6}));
  Embedding::Saved saved;
  const Tensor out = embedding.Forward(Ids({3}, {2, 0, 2}), &saved);
  EXPECT_EQ(out.ToFloatVector(), (std::vector<float>{5, 6, 1, 2, 5, 6}));
  embedding.Backward(Tensor::FromVector({3, 2}, {1, 10, 100, 1000, 0.5, 0.25}), saved);
  // Row 0 gets token 1; row 1 nothing; row 2 tokens 0 and 2 summed.
  EXPECT_EQ(embedding.weight().grad.ToFloatVector(),
            (std::vector<float>{100, 1000, 0, 0, 1.5, 10.25}));
  // A second backward accumulates.
  embedding.Backward(Tensor::FromVector({3, 2}, {1, 1, 1, 1, 1, 1}), saved);
  EXPECT_EQ(embedding.weight().grad.ToFloatVector(),
            (std::vector<float>{101, 1001, 0, 0, 3.5, 12.25}));
}

// The kernel promises each row's sum in token order, whatever the threads:
// the fp32 result is bitwise that of a sequential loop, for any thread count.
TEST(EmbeddingTest, BackwardIsDeterministicAndSequentialOrder) {
  // dim 600 spans three column blocks; vocab 11 over 4000 tokens repeats a lot.
  const int64_t vocab = 11, dim = 600, n = 4000;
  const Tensor ids = RandomIds({n}, vocab, 3);
  const Tensor dout = RandomTensor({n, dim}, DType::kF32, 4);
  const Tensor start = RandomTensor({vocab, dim}, DType::kF32, 5);

  std::vector<float> expected = start.ToFloatVector();
  for (int64_t t = 0; t < n; ++t) {
    const int32_t id = ids.data<int32_t>()[t];
    for (int64_t i = 0; i < dim; ++i) expected[id * dim + i] += dout.data<float>()[t * dim + i];
  }
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 3, 8}) {
    omp_set_num_threads(threads);
    Embedding embedding("emb", vocab, dim, DType::kF32);
    embedding.weight().grad.CopyFrom(start);
    Embedding::Saved saved;
    saved.ids = ids;
    embedding.Backward(dout, saved);
    EXPECT_EQ(embedding.weight().grad.ToFloatVector(), expected) << threads << " threads";
  }
  omp_set_num_threads(saved_threads);
}

TEST(EmbeddingTest, Float32MatchesFloat64) {
  const int64_t vocab = 50, dim = 64;
  Embedding emb32("emb", vocab, dim, DType::kF32);
  Embedding emb64("emb", vocab, dim, DType::kF64);
  const Tensor w = RandomTensor({vocab, dim}, DType::kF64, 6);
  emb64.weight().value.CopyFrom(w);
  emb32.weight().value.CopyFrom(w.Cast(DType::kF32));
  const Tensor ids = RandomIds({3, 9}, vocab, 7);
  Embedding::Saved s32, s64;
  // A lookup only copies: the sole difference is rounding the table to fp32.
  EXPECT_LT(MaxRelativeError(emb32.Forward(ids, &s32), emb64.Forward(ids, &s64)), 1e-7);
}

TEST(EmbeddingDeathTest, OutOfRangeIdNamesIdPositionAndVocab) {
  Embedding embedding("model.embed_tokens", 10, 4);
  Embedding::Saved saved;
  EXPECT_DEATH(embedding.Forward(Ids({2, 3}, {0, 1, 2, 3, 10, 5}), &saved),
               "model.embed_tokens.weight: token id 10 at flat position 4 of ids \\[2, 3\\] is "
               "outside the vocabulary \\[0, 10\\)");
  EXPECT_DEATH(embedding.Forward(Ids({2}, {-1, 0}), &saved),
               "token id -1 at flat position 0 .* outside the vocabulary \\[0, 10\\)");
}

TEST(EmbeddingDeathTest, IdsMustBeInt32) {
  Embedding embedding("emb", 10, 4);
  Embedding::Saved saved;
  EXPECT_DEATH(embedding.Forward(Tensor::Zeros({3}, DType::kF32), &saved),
               "emb.weight: ids must be i32, got f32\\[3\\]");
}

TEST(EmbeddingDeathTest, WrongGradientShape) {
  Embedding embedding("emb", 10, 4);
  Embedding::Saved saved;
  embedding.Forward(Ids({3}, {1, 2, 3}), &saved);
  EXPECT_DEATH(embedding.Backward(Tensor::Zeros({3, 5}, DType::kF32), saved),
               "emb.weight: dout must be f32\\[3, 4\\] on cpu, got f32\\[3, 5\\]");
}

}  // namespace
}  // namespace moe
