#include "core/ops/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"

namespace moe::cpu {
namespace {

// Width of the pieces the running log-sum-exp consumes: one max pass and one
// exp pass per piece stay in L1 while the row is read once.
constexpr int64_t kChunk = 1024;

}  // namespace

template <typename T>
void CrossEntropyForward(T* losses, T* lse, const T* logits, const int32_t* labels, int64_t rows,
                         int64_t vocab) {
  MOE_CHECK(rows >= 0 && vocab > 0)
      << "cross-entropy kernel: bad sizes rows=" << rows << " vocab=" << vocab;
  // An out-of-range label would read past the row: check before any work.
  for (int64_t r = 0; r < rows; ++r) {
    MOE_CHECK(labels[r] < vocab) << "cross-entropy kernel: label " << labels[r] << " at row " << r
                                 << " is not below vocab " << vocab;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = logits + r * vocab;
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (int64_t c0 = 0; c0 < vocab; c0 += kChunk) {
      const int64_t c1 = std::min(vocab, c0 + kChunk);
      double chunk_max = m;
      for (int64_t c = c0; c < c1; ++c) chunk_max = std::max(chunk_max, double(row[c]));
      double chunk_sum = 0;
#pragma omp simd reduction(+ : chunk_sum)
      for (int64_t c = c0; c < c1; ++c) chunk_sum += std::exp(double(row[c]) - chunk_max);
      // exp(-inf) = 0 on the first chunk, where there is nothing to rescale.
      s = s * std::exp(m - chunk_max) + chunk_sum;
      m = chunk_max;
    }
    const double row_lse = m + std::log(s);
    lse[r] = static_cast<T>(row_lse);
    losses[r] = labels[r] < 0 ? T(0) : static_cast<T>(row_lse - double(row[labels[r]]));
  }
}

template <typename T>
void CrossEntropyBackward(T* dlogits, const T* logits, const T* lse, const int32_t* labels,
                          double scale, int64_t rows, int64_t vocab) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    T* drow = dlogits + r * vocab;
    const int32_t label = labels[r];
    if (label < 0) {
      std::fill_n(drow, vocab, T(0));
      continue;
    }
    const T* row = logits + r * vocab;
    const T l = lse[r], s = static_cast<T>(scale);
#pragma omp simd
    for (int64_t c = 0; c < vocab; ++c) drow[c] = s * std::exp(row[c] - l);
    drow[label] -= s;
  }
}

template void CrossEntropyForward<float>(float*, float*, const float*, const int32_t*, int64_t,
                                         int64_t);
template void CrossEntropyForward<double>(double*, double*, const double*, const int32_t*, int64_t,
                                          int64_t);
template void CrossEntropyBackward<float>(float*, const float*, const float*, const int32_t*,
                                          double, int64_t, int64_t);
template void CrossEntropyBackward<double>(double*, const double*, const double*, const int32_t*,
                                           double, int64_t, int64_t);

}  // namespace moe::cpu
