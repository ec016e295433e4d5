#include "core/layers/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Finite differences in double with h = 1e-5: truncation O(h^2) and rounding
// ~1e-16 / h keep the error near 1e-10 relative; 1e-7 catches any wrong term.
constexpr double kGradTolerance = 1e-7;
// The blockwise kernel and the plain reference differ only in rounding order.
constexpr double kDoubleTolerance = 1e-12;
// fp32 against fp64 on unit-variance inputs: a few ulps of fp32 (6e-8) per
// accumulation step over head_dim and seq.
constexpr double kFloatTolerance = 1e-5;

struct Case {
  int64_t batch, seq, q_heads, kv_heads, head_dim, block;
};

// The layouts the kernel must get right: MHA, GQA with 2 and 4 q heads per
// kv head, seq not a multiple of the block, seq below one block, odd
// head_dim, several blocks.
const Case kCases[] = {
    {2, 11, 2, 2, 5, 4},  // MHA, 3 blocks, last one partial
    {1, 11, 4, 2, 3, 4},  // GQA r = 2, odd head_dim
    {2, 7, 8, 2, 4, 3},   // GQA r = 4
    {1, 5, 4, 1, 6, 64},  // seq < block, multi-query
    {1, 12, 2, 1, 7, 4},  // seq a multiple of the block
    {1, 9, 3, 3, 2, 1},   // block of one row
};

std::string Name(const Case& c) {
  return "batch=" + std::to_string(c.batch) + " seq=" + std::to_string(c.seq) +
         " q_heads=" + std::to_string(c.q_heads) + " kv_heads=" + std::to_string(c.kv_heads) +
         " head_dim=" + std::to_string(c.head_dim) + " block=" + std::to_string(c.block);
}

// Plain O(seq^2) causal GQA in double, written from the definition.
void NaiveAttention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t kv_heads,
                    Tensor* out, Tensor* lse) {
  const int64_t batch = q.dim(0), seq = q.dim(1), q_heads = q.dim(2), dim = q.dim(3);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));
  *out = Tensor::Zeros(q.shape(), DType::kF64);
  *lse = Tensor::Zeros({batch, q_heads, seq}, DType::kF64);
  auto qi = [&](int64_t b, int64_t s, int64_t h, int64_t d) {
    return ((b * seq + s) * q_heads + h) * dim + d;
  };
  auto ki = [&](int64_t b, int64_t s, int64_t g, int64_t d) {
    return ((b * seq + s) * kv_heads + g) * dim + d;
  };
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < q_heads; ++h) {
      const int64_t g = h / (q_heads / kv_heads);
      for (int64_t i = 0; i < seq; ++i) {
        std::vector<double> score(static_cast<size_t>(i + 1));
        double max_score = -1e300;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d) {
            dot += q.GetAsDouble(qi(b, i, h, d)) * k.GetAsDouble(ki(b, j, g, d));
          }
          score[j] = dot * scale;
          max_score = std::max(max_score, score[j]);
        }
        double sum = 0;
        for (double s : score) sum += std::exp(s - max_score);
        lse->SetFromDouble((b * q_heads + h) * seq + i, max_score + std::log(sum));
        for (int64_t d = 0; d < dim; ++d) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) {
            acc += std::exp(score[j] - max_score) / sum * v.GetAsDouble(ki(b, j, g, d));
          }
          out->SetFromDouble(qi(b, i, h, d), acc);
        }
      }
    }
  }
}

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs MakeInputs(const Case& c, uint64_t seed) {
  return {RandomTensor({c.batch, c.seq, c.q_heads, c.head_dim}, DType::kF64, seed),
          RandomTensor({c.batch, c.seq, c.kv_heads, c.head_dim}, DType::kF64, seed + 1),
          RandomTensor({c.batch, c.seq, c.kv_heads, c.head_dim}, DType::kF64, seed + 2),
          RandomTensor({c.batch, c.seq, c.q_heads, c.head_dim}, DType::kF64, seed + 3)};
}

TEST(AttentionTest, ForwardMatchesNaiveReference) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(Name(c));
    const Inputs in = MakeInputs(c, 10);
    Attention attention(c.q_heads, c.kv_heads, c.head_dim, c.block);
    Attention::Saved saved;
    const Tensor out = attention.Forward(in.q, in.k, in.v, &saved);
    Tensor ref_out, ref_lse;
    NaiveAttention(in.q, in.k, in.v, c.kv_heads, &ref_out, &ref_lse);
    EXPECT_LT(MaxRelativeError(out, ref_out), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(saved.lse, ref_lse), kDoubleTolerance);
  }
}

TEST(AttentionTest, BackwardMatchesFiniteDifferences) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(Name(c));
    Inputs in = MakeInputs(c, 20);
    Attention attention(c.q_heads, c.kv_heads, c.head_dim, c.block);
    // loss = <forward(q, k, v), dout>, whose gradient is backward(dout).
    auto loss = [&] {
      Attention::Saved saved;
      return Dot(attention.Forward(in.q, in.k, in.v, &saved), in.dout);
    };
    Attention::Saved saved;
    attention.Forward(in.q, in.k, in.v, &saved);
    const Attention::Grads grads = attention.Backward(in.dout, saved);

    std::vector<int64_t> checked;
    const Tensor numeric_dq = NumericalGradient(in.q, loss, 1e-5, 0, &checked);
    EXPECT_LT(GradientError(grads.dq, numeric_dq, checked), kGradTolerance) << "dq";
    const Tensor numeric_dk = NumericalGradient(in.k, loss, 1e-5, 0, &checked);
    EXPECT_LT(GradientError(grads.dk, numeric_dk, checked), kGradTolerance) << "dk";
    const Tensor numeric_dv = NumericalGradient(in.v, loss, 1e-5, 0, &checked);
    EXPECT_LT(GradientError(grads.dv, numeric_dv, checked), kGradTolerance) << "dv";
  }
}

// The block size is a schedule choice: outputs and gradients must agree
// across block sizes to rounding, on a sequence long enough for many blocks.
TEST(AttentionTest, BlockSizeDoesNotChangeTheResult) {
  const Case c{2, 70, 4, 2, 16, 64};
  const Inputs in = MakeInputs(c, 30);
  Attention reference(c.q_heads, c.kv_heads, c.head_dim, /*block=*/128);
  Attention::Saved ref_saved;
  const Tensor ref_out = reference.Forward(in.q, in.k, in.v, &ref_saved);
  const Attention::Grads ref = reference.Backward(in.dout, ref_saved);
  for (int64_t block : {1, 5, 16, 64}) {
    SCOPED_TRACE("block=" + std::to_string(block));
    Attention attention(c.q_heads, c.kv_heads, c.head_dim, block);
    Attention::Saved saved;
    const Tensor out = attention.Forward(in.q, in.k, in.v, &saved);
    const Attention::Grads grads = attention.Backward(in.dout, saved);
    EXPECT_LT(MaxRelativeError(out, ref_out), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(saved.lse, ref_saved.lse), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(grads.dq, ref.dq), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(grads.dk, ref.dk), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(grads.dv, ref.dv), kDoubleTolerance);
  }
}

TEST(AttentionTest, Float32MatchesFloat64) {
  const Case c{2, 37, 4, 2, 16, 8};
  const Inputs in = MakeInputs(c, 40);
  Attention attention(c.q_heads, c.kv_heads, c.head_dim, c.block);
  Attention::Saved s64, s32;
  const Tensor out64 = attention.Forward(in.q, in.k, in.v, &s64);
  const Tensor out32 = attention.Forward(in.q.Cast(DType::kF32), in.k.Cast(DType::kF32),
                                         in.v.Cast(DType::kF32), &s32);
  EXPECT_LT(MaxRelativeError(out32, out64), kFloatTolerance);
  EXPECT_LT(MaxRelativeError(s32.lse, s64.lse), kFloatTolerance);

  // Gradients go through the recomputed probabilities and two more GEMMs
  // (measured ~2e-7); the same bound as the forward leaves a 50x margin.
  const Attention::Grads g64 = attention.Backward(in.dout, s64);
  const Attention::Grads g32 = attention.Backward(in.dout.Cast(DType::kF32), s32);
  EXPECT_LT(MaxRelativeError(g32.dq, g64.dq), kFloatTolerance);
  EXPECT_LT(MaxRelativeError(g32.dk, g64.dk), kFloatTolerance);
  EXPECT_LT(MaxRelativeError(g32.dv, g64.dv), kFloatTolerance);
}

bool SameBits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// Each output block is owned by one thread with a fixed loop order, so runs
// repeat bit for bit (no atomics, no schedule-dependent sums).
TEST(AttentionTest, BackwardIsDeterministic) {
  const Case c{2, 50, 4, 1, 8, 8};
  const Inputs in = MakeInputs(c, 50);
  Attention attention(c.q_heads, c.kv_heads, c.head_dim, c.block);
  const Tensor q = in.q.Cast(DType::kF32), k = in.k.Cast(DType::kF32), v = in.v.Cast(DType::kF32),
               dout = in.dout.Cast(DType::kF32);
  Attention::Saved s1, s2;
  const Tensor out1 = attention.Forward(q, k, v, &s1);
  const Tensor out2 = attention.Forward(q, k, v, &s2);
  EXPECT_TRUE(SameBits(out1, out2));
  const Attention::Grads g1 = attention.Backward(dout, s1);
  const Attention::Grads g2 = attention.Backward(dout, s2);
  EXPECT_TRUE(SameBits(g1.dq, g2.dq));
  EXPECT_TRUE(SameBits(g1.dk, g2.dk));
  EXPECT_TRUE(SameBits(g1.dv, g2.dv));
}

// Causality: the first query's output is its own value row, whatever the keys.
TEST(AttentionTest, FirstTokenAttendsOnlyToItself) {
  const Case c{1, 6, 2, 1, 4, 4};
  const Inputs in = MakeInputs(c, 60);
  Attention attention(c.q_heads, c.kv_heads, c.head_dim, c.block);
  Attention::Saved saved;
  const Tensor out = attention.Forward(in.q, in.k, in.v, &saved);
  for (int64_t h = 0; h < c.q_heads; ++h) {
    for (int64_t d = 0; d < c.head_dim; ++d) {
      EXPECT_DOUBLE_EQ(out.GetAsDouble(h * c.head_dim + d), in.v.GetAsDouble(d));
    }
  }
}

TEST(AttentionDeathTest, HeadsNotDivisibleByKvHeads) {
  EXPECT_DEATH(Attention(6, 4, 8), "Attention: q_heads \\(6\\) must be a multiple of kv_heads");
}

TEST(AttentionDeathTest, WrongShapesNameTheTensor) {
  Attention attention(4, 2, 8);
  Attention::Saved saved;
  const Tensor q = Tensor::Zeros({1, 5, 4, 8}, DType::kF32);
  const Tensor kv = Tensor::Zeros({1, 5, 2, 8}, DType::kF32);
  EXPECT_DEATH(attention.Forward(Tensor::Zeros({1, 5, 4, 7}, DType::kF32), kv, kv, &saved),
               "Attention: q must be \\[batch, seq, 4, 8\\]");
  EXPECT_DEATH(attention.Forward(q, Tensor::Zeros({1, 5, 4, 8}, DType::kF32), kv, &saved),
               "Attention: k must be \\[1, 5, 2, 8\\]");
  EXPECT_DEATH(attention.Forward(q, kv, Tensor::Zeros({1, 5, 2, 8}, DType::kF64), &saved),
               "Attention: v must be");
  attention.Forward(q, kv, kv, &saved);
  EXPECT_DEATH(attention.Backward(Tensor::Zeros({1, 4, 4, 8}, DType::kF32), saved),
               "Attention: dout .* does not match the output");
}

TEST(AttentionDeathTest, UnsupportedDtype) {
  Attention attention(2, 2, 4);
  Attention::Saved saved;
  const Tensor x = Tensor::Zeros({1, 3, 2, 4}, DType::kBF16);
  EXPECT_DEATH(attention.Forward(x, x, x, &saved), "Attention: q must be f32 or f64 on the CPU");
}

}  // namespace
}  // namespace moe
