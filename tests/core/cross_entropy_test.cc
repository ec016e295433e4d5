#include "core/layers/cross_entropy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/ops/cpu/cross_entropy.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomIds;
using testing::RandomTensor;

// Finite differences in double with h = 1e-5: error near 1e-10 relative for
// this smooth loss; 1e-7 catches any wrong term.
constexpr double kGradTolerance = 1e-7;
// Different summation orders of the same double sums (chunking, BLAS blocks).
constexpr double kDoubleTolerance = 1e-12;

// Token ids in [0, vocab) with every third position ignored (-100, as in
// Hugging Face).
Tensor LabelsWithIgnored(int64_t tokens, int64_t vocab, uint64_t seed) {
  Tensor labels = RandomIds({tokens}, vocab, seed);
  for (int64_t i = 1; i < tokens; i += 3) labels.data<int32_t>()[i] = -100;
  return labels;
}

// logits = hidden weight^T in double, plainly.
Tensor NaiveLogits(const Tensor& hidden, const Tensor& weight) {
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1), vocab = weight.dim(0);
  Tensor logits = Tensor::Zeros({tokens, vocab}, DType::kF64);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t v = 0; v < vocab; ++v) {
      double dot = 0;
      for (int64_t i = 0; i < h; ++i)
        dot += hidden.GetAsDouble(t * h + i) * weight.GetAsDouble(v * h + i);
      logits.SetFromDouble(t * vocab + v, dot);
    }
  }
  return logits;
}

// Per-row log-sum-exp and loss (0 where ignored), from the definition.
void NaiveLoss(const Tensor& logits, const Tensor& labels, std::vector<double>* lse,
               std::vector<double>* losses) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  lse->assign(static_cast<size_t>(rows), 0.0);
  losses->assign(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    double max_logit = -1e300;
    for (int64_t v = 0; v < vocab; ++v)
      max_logit = std::max(max_logit, logits.GetAsDouble(r * vocab + v));
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v)
      sum += std::exp(logits.GetAsDouble(r * vocab + v) - max_logit);
    (*lse)[r] = max_logit + std::log(sum);
    const int32_t label = labels.data<int32_t>()[r];
    if (label >= 0) (*losses)[r] = (*lse)[r] - logits.GetAsDouble(r * vocab + label);
  }
}

double MaxAbsDiff(const Tensor& a, const std::vector<double>& b) {
  double worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst, std::abs(a.GetAsDouble(i) - b[i]));
  return worst;
}

// ---- The logits-level kernel --------------------------------------------

TEST(CrossEntropyKernelTest, ForwardMatchesNaive) {
  // vocab 2500 spans several of the kernel's internal chunks (1024), the
  // wide logits (std 4) make the running max matter.
  for (int64_t vocab : {int64_t{37}, int64_t{2500}}) {
    SCOPED_TRACE("vocab=" + std::to_string(vocab));
    const int64_t rows = 7;
    const Tensor logits = RandomTensor({rows, vocab}, DType::kF64, 1, 4.0);
    const Tensor labels = LabelsWithIgnored(rows, vocab, 2);
    Tensor losses = Tensor::Empty({rows}, DType::kF64), lse = Tensor::Empty({rows}, DType::kF64);
    cpu::CrossEntropyForward(losses.data<double>(), lse.data<double>(), logits.data<double>(),
                             labels.data<int32_t>(), rows, vocab);
    std::vector<double> ref_lse, ref_losses;
    NaiveLoss(logits, labels, &ref_lse, &ref_losses);
    // Absolute, on values of order 10.
    EXPECT_LT(MaxAbsDiff(lse, ref_lse), kDoubleTolerance * 10);
    EXPECT_LT(MaxAbsDiff(losses, ref_losses), kDoubleTolerance * 10);
    EXPECT_EQ(losses.GetAsDouble(1), 0.0);  // ignored row
  }
}

TEST(CrossEntropyKernelTest, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 5, vocab = 11;
  const double scale = 0.25;
  Tensor logits = RandomTensor({rows, vocab}, DType::kF64, 3, 2.0);
  const Tensor labels = LabelsWithIgnored(rows, vocab, 4);
  Tensor losses = Tensor::Empty({rows}, DType::kF64), lse = Tensor::Empty({rows}, DType::kF64);
  auto loss = [&] {
    cpu::CrossEntropyForward(losses.data<double>(), lse.data<double>(), logits.data<double>(),
                             labels.data<int32_t>(), rows, vocab);
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += losses.GetAsDouble(r);
    return scale * sum;
  };
  loss();
  Tensor dlogits = Tensor::Empty({rows, vocab}, DType::kF64);
  cpu::CrossEntropyBackward(dlogits.data<double>(), logits.data<double>(), lse.data<double>(),
                            labels.data<int32_t>(), scale, rows, vocab);
  std::vector<int64_t> checked;
  const Tensor numeric = NumericalGradient(logits, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dlogits, numeric, checked), kGradTolerance);
  for (int64_t v = 0; v < vocab; ++v) EXPECT_EQ(dlogits.GetAsDouble(vocab + v), 0.0);
}

// ---- The fused LM-head layer ----------------------------------------------

struct Problem {
  Tensor hidden, weight, labels;
};

Problem MakeProblem(int64_t tokens, int64_t h, int64_t vocab, uint64_t seed) {
  return {RandomTensor({tokens, h}, DType::kF64, seed),
          RandomTensor({vocab, h}, DType::kF64, seed + 1, 0.7),
          LabelsWithIgnored(tokens, vocab, seed + 2)};
}

TEST(CrossEntropyTest, ForwardMatchesKernelAndNaive) {
  const int64_t tokens = 10, h = 6, vocab = 37;
  const Problem p = MakeProblem(tokens, h, vocab, 10);
  CrossEntropy loss_layer(/*vocab_chunk=*/8);
  CrossEntropy::Saved saved;
  const CrossEntropy::Result result = loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);

  const Tensor logits = NaiveLogits(p.hidden, p.weight);
  Tensor losses = Tensor::Empty({tokens}, DType::kF64), lse = Tensor::Empty({tokens}, DType::kF64);
  cpu::CrossEntropyForward(losses.data<double>(), lse.data<double>(), logits.data<double>(),
                           p.labels.data<int32_t>(), tokens, vocab);
  double kernel_sum = 0;
  for (int64_t r = 0; r < tokens; ++r) kernel_sum += losses.GetAsDouble(r);
  std::vector<double> ref_lse, ref_losses;
  NaiveLoss(logits, p.labels, &ref_lse, &ref_losses);
  double ref_sum = 0;
  for (double l : ref_losses) ref_sum += l;

  EXPECT_EQ(result.tokens, 7);  // positions 1, 4, 7 ignored
  EXPECT_NEAR(result.loss_sum, kernel_sum, kDoubleTolerance * std::abs(kernel_sum));
  EXPECT_NEAR(result.loss_sum, ref_sum, kDoubleTolerance * std::abs(ref_sum));
  EXPECT_LT(MaxRelativeError(saved.lse, lse), kDoubleTolerance);
}

TEST(CrossEntropyTest, BackwardMatchesFiniteDifferences) {
  const int64_t tokens = 7, h = 5, vocab = 13;
  Problem p = MakeProblem(tokens, h, vocab, 20);
  CrossEntropy loss_layer(/*vocab_chunk=*/4);  // 4 does not divide 13
  const double scale = 1.0 / 5;                // 5 non-ignored tokens
  auto loss = [&] {
    CrossEntropy::Saved saved;
    return scale * loss_layer.Forward(p.hidden, p.weight, p.labels, &saved).loss_sum;
  };
  CrossEntropy::Saved saved;
  loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);
  Tensor dweight = Tensor::Zeros({vocab, h}, DType::kF64);
  const Tensor dhidden = loss_layer.Backward(scale, p.weight, saved, &dweight);

  std::vector<int64_t> checked;
  const Tensor numeric_dh = NumericalGradient(p.hidden, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dhidden, numeric_dh, checked), kGradTolerance) << "dhidden";
  const Tensor numeric_dw = NumericalGradient(p.weight, loss, 1e-5, 0, &checked);
  EXPECT_LT(GradientError(dweight, numeric_dw, checked), kGradTolerance) << "dweight";
}

// Chunking is a memory choice: chunks that divide vocab, that don't, of one
// column, and wider than vocab all give the same loss and gradients.
TEST(CrossEntropyTest, ChunkSizeDoesNotChangeTheResult) {
  const int64_t tokens = 9, h = 8, vocab = 40;
  const Problem p = MakeProblem(tokens, h, vocab, 30);
  const double scale = 0.1;
  auto run = [&](int64_t chunk, CrossEntropy::Result* result, CrossEntropy::Saved* saved,
                 Tensor* dhidden, Tensor* dweight) {
    CrossEntropy loss_layer(chunk);
    *result = loss_layer.Forward(p.hidden, p.weight, p.labels, saved);
    *dweight = Tensor::Zeros({vocab, h}, DType::kF64);
    *dhidden = loss_layer.Backward(scale, p.weight, *saved, dweight);
  };
  CrossEntropy::Result ref;
  CrossEntropy::Saved ref_saved;
  Tensor ref_dh, ref_dw;
  run(vocab, &ref, &ref_saved, &ref_dh, &ref_dw);
  for (int64_t chunk : {1, 3, 8, 40, 4096}) {
    SCOPED_TRACE("chunk=" + std::to_string(chunk));
    CrossEntropy::Result result;
    CrossEntropy::Saved saved;
    Tensor dh, dw;
    run(chunk, &result, &saved, &dh, &dw);
    EXPECT_EQ(result.tokens, ref.tokens);
    EXPECT_NEAR(result.loss_sum, ref.loss_sum, kDoubleTolerance * std::abs(ref.loss_sum));
    EXPECT_LT(MaxRelativeError(saved.lse, ref_saved.lse), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(dh, ref_dh), kDoubleTolerance);
    EXPECT_LT(MaxRelativeError(dw, ref_dw), kDoubleTolerance);
  }
}

TEST(CrossEntropyTest, IgnoredTokensContributeNothing) {
  const int64_t tokens = 6, h = 4, vocab = 9;
  Problem p = MakeProblem(tokens, h, vocab, 40);
  CrossEntropy loss_layer(/*vocab_chunk=*/4);
  CrossEntropy::Saved saved;
  loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);
  Tensor dweight = Tensor::Zeros({vocab, h}, DType::kF64);
  const Tensor dhidden = loss_layer.Backward(1.0, p.weight, saved, &dweight);
  for (int64_t r = 1; r < tokens; r += 3) {
    for (int64_t i = 0; i < h; ++i) EXPECT_EQ(dhidden.GetAsDouble(r * h + i), 0.0);
  }

  // All ignored: no loss, no tokens, no gradient.
  for (int64_t r = 0; r < tokens; ++r) p.labels.data<int32_t>()[r] = -1;
  const CrossEntropy::Result result = loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);
  EXPECT_EQ(result.loss_sum, 0.0);
  EXPECT_EQ(result.tokens, 0);
  dweight.SetZero();
  const Tensor dh = loss_layer.Backward(1.0, p.weight, saved, &dweight);
  for (int64_t i = 0; i < dh.numel(); ++i) EXPECT_EQ(dh.GetAsDouble(i), 0.0);
  for (int64_t i = 0; i < dweight.numel(); ++i) EXPECT_EQ(dweight.GetAsDouble(i), 0.0);
}

TEST(CrossEntropyTest, WeightGradientAccumulates) {
  const int64_t tokens = 5, h = 4, vocab = 7;
  const Problem p = MakeProblem(tokens, h, vocab, 50);
  CrossEntropy loss_layer(/*vocab_chunk=*/3);
  CrossEntropy::Saved saved;
  loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);
  Tensor dweight = Tensor::Zeros({vocab, h}, DType::kF64);
  loss_layer.Backward(0.5, p.weight, saved, &dweight);
  const Tensor once = dweight.Clone();
  loss_layer.Backward(0.5, p.weight, saved, &dweight);
  for (int64_t i = 0; i < dweight.numel(); ++i) {
    EXPECT_NEAR(dweight.GetAsDouble(i), 2 * once.GetAsDouble(i), 1e-14);
  }
}

TEST(CrossEntropyTest, Float32MatchesFloat64) {
  const int64_t tokens = 16, h = 32, vocab = 300;
  const Problem p = MakeProblem(tokens, h, vocab, 60);
  CrossEntropy loss_layer(/*vocab_chunk=*/64);
  CrossEntropy::Saved s64, s32;
  const CrossEntropy::Result r64 = loss_layer.Forward(p.hidden, p.weight, p.labels, &s64);
  const Tensor hidden32 = p.hidden.Cast(DType::kF32), weight32 = p.weight.Cast(DType::kF32);
  const CrossEntropy::Result r32 = loss_layer.Forward(hidden32, weight32, p.labels, &s32);
  // fp32 logits carry ~1e-7 relative error per dot product of length 32;
  // the log-sum-exp itself accumulates in double.
  EXPECT_NEAR(r32.loss_sum, r64.loss_sum, 1e-5 * std::abs(r64.loss_sum));
  EXPECT_LT(MaxRelativeError(s32.lse, s64.lse), 1e-5);

  // Gradients go through exp(logit - lse) in fp32 and a second GEMM
  // (measured ~4e-7).
  Tensor dw64 = Tensor::Zeros({vocab, h}, DType::kF64),
         dw32 = Tensor::Zeros({vocab, h}, DType::kF32);
  const Tensor dh64 = loss_layer.Backward(0.1, p.weight, s64, &dw64);
  const Tensor dh32 = loss_layer.Backward(0.1, weight32, s32, &dw32);
  EXPECT_LT(MaxRelativeError(dh32, dh64), 1e-5);
  EXPECT_LT(MaxRelativeError(dw32, dw64), 1e-5);
}

TEST(CrossEntropyDeathTest, LabelOutOfRangeNamesLabelPositionAndVocab) {
  const Problem p = MakeProblem(4, 3, 5, 70);
  Tensor labels = p.labels.Clone();
  labels.data<int32_t>()[2] = 5;
  CrossEntropy loss_layer;
  CrossEntropy::Saved saved;
  EXPECT_DEATH(loss_layer.Forward(p.hidden, p.weight, labels, &saved),
               "CrossEntropy: label 5 at position 2 is out of range for vocab 5");
}

TEST(CrossEntropyDeathTest, BadShapesNameTheLayer) {
  const Problem p = MakeProblem(4, 3, 5, 80);
  CrossEntropy loss_layer;
  CrossEntropy::Saved saved;
  EXPECT_DEATH(loss_layer.Forward(p.hidden, Tensor::Zeros({5, 4}, DType::kF64), p.labels, &saved),
               "CrossEntropy: weight must be \\[vocab, 3\\]");
  EXPECT_DEATH(loss_layer.Forward(p.hidden, p.weight, RandomIds({3}, 5, 1), &saved),
               "CrossEntropy: labels must be i32\\[4\\]");
  EXPECT_DEATH(loss_layer.Forward(p.hidden, p.weight, Tensor::Zeros({4}, DType::kI64), &saved),
               "CrossEntropy: labels must be i32\\[4\\]");
  EXPECT_DEATH(loss_layer.Forward(p.hidden.Reshape({2, 2, 3}), p.weight, p.labels, &saved),
               "CrossEntropy: hidden must be \\[tokens, hidden\\]");
  loss_layer.Forward(p.hidden, p.weight, p.labels, &saved);
  Tensor wrong = Tensor::Zeros({5, 2}, DType::kF64);
  EXPECT_DEATH(loss_layer.Backward(1.0, p.weight, saved, &wrong),
               "CrossEntropy: dweight must be like weight");
}

TEST(CrossEntropyDeathTest, KernelRejectsLabelAtVocab) {
  const Tensor logits = RandomTensor({2, 4}, DType::kF64, 90);
  Tensor labels = Tensor::Zeros({2}, DType::kI32);
  labels.data<int32_t>()[1] = 4;
  Tensor losses = Tensor::Empty({2}, DType::kF64), lse = Tensor::Empty({2}, DType::kF64);
  EXPECT_DEATH(cpu::CrossEntropyForward(losses.data<double>(), lse.data<double>(),
                                        logits.data<double>(), labels.data<int32_t>(), 2, 4),
               "cross-entropy kernel: label 4 at row 1 is not below vocab 4");
}

}  // namespace
}  // namespace moe
