#include "core/layers/chunked_lm_head.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/ops/cpu/gemm.h"

namespace moe::chunked_lm_head {
namespace {

// logits[:, :cols] = hidden W[v0 : v0 + cols]^T (local rows), row stride `ld`.
template <typename T>
void ChunkLogits(const Tensor& hidden, const Tensor& weight, int64_t v0, int64_t cols, T* logits,
                 int64_t ld) {
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1);
  cpu::Gemm<T>(false, true, tokens, cols, h, T(1), hidden.data<T>(), h, weight.data<T>() + v0 * h,
               h, T(0), logits, ld);
}

}  // namespace

template <typename T>
void Statistics(const Tensor& hidden, const Tensor& weight, const int32_t* label,
                int64_t vocab_begin, int64_t chunk, double* m, double* s, double* label_logit) {
  const int64_t tokens = hidden.dim(0), local_vocab = weight.dim(0);
  std::vector<T> logits(static_cast<size_t>(tokens * chunk));
  for (int64_t v0 = 0; v0 < local_vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, local_vocab - v0);
    ChunkLogits<T>(hidden, weight, v0, cols, logits.data(), chunk);
    const int64_t g0 = vocab_begin + v0;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tokens; ++r) {
      const T* row = logits.data() + r * chunk;
      double chunk_max = m[r];
      for (int64_t c = 0; c < cols; ++c) chunk_max = std::max(chunk_max, double(row[c]));
      double chunk_sum = 0;
#pragma omp simd reduction(+ : chunk_sum)
      for (int64_t c = 0; c < cols; ++c) chunk_sum += std::exp(double(row[c]) - chunk_max);
      // exp(-inf) = 0 on the first chunk, where there is nothing to rescale.
      s[r] = s[r] * std::exp(m[r] - chunk_max) + chunk_sum;
      m[r] = chunk_max;
      if (label[r] >= g0 && label[r] < g0 + cols) label_logit[r] = row[label[r] - g0];
    }
  }
}

template <typename T>
void Backward(double scale, const Tensor& hidden, const Tensor& weight, const int32_t* label,
              const T* lse, int64_t vocab_begin, int64_t chunk, Tensor* dhidden, Tensor* dweight) {
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1), local_vocab = weight.dim(0);
  std::vector<T> p(static_cast<size_t>(tokens * chunk));
  dhidden->SetZero();
  for (int64_t v0 = 0; v0 < local_vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, local_vocab - v0);
    const int64_t g0 = vocab_begin + v0;
    ChunkLogits<T>(hidden, weight, v0, cols, p.data(), chunk);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tokens; ++r) {
      T* row = p.data() + r * chunk;
      const T row_scale = label[r] < 0 ? T(0) : static_cast<T>(scale);
      const T l = lse[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] = row_scale * std::exp(row[c] - l);
      if (label[r] >= g0 && label[r] < g0 + cols) row[label[r] - g0] -= row_scale;
    }
    // dhidden += dlogits W_c;  dW_c += dlogits^T hidden.
    cpu::Gemm<T>(false, false, tokens, h, cols, T(1), p.data(), chunk, weight.data<T>() + v0 * h, h,
                 T(1), dhidden->data<T>(), h);
    cpu::Gemm<T>(true, false, cols, h, tokens, T(1), p.data(), chunk, hidden.data<T>(), h, T(1),
                 dweight->data<T>() + v0 * h, h);
  }
}

template void Statistics<float>(const Tensor&, const Tensor&, const int32_t*, int64_t, int64_t,
                                double*, double*, double*);
template void Statistics<double>(const Tensor&, const Tensor&, const int32_t*, int64_t, int64_t,
                                 double*, double*, double*);
template void Backward<float>(double, const Tensor&, const Tensor&, const int32_t*, const float*,
                              int64_t, int64_t, Tensor*, Tensor*);
template void Backward<double>(double, const Tensor&, const Tensor&, const int32_t*, const double*,
                               int64_t, int64_t, Tensor*, Tensor*);

}  // namespace moe::chunked_lm_head
