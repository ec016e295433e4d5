#include "core/ops/cpu/swiglu.h"

#include "core/ops/cpu/fast_exp.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace moe::cpu {
namespace {

// Elements per OpenMP chunk: large enough to amortise scheduling, small
// enough that a few-thousand-wide MLP row still spreads over the threads.
constexpr int64_t kChunk = 4096;

template <typename T>
T Sigmoid(T x) {
  return T(1) / (T(1) + FastExp(-x));
}

}  // namespace

template <typename T>
void SwigluForward(T* out, const T* gate, const T* up, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd
    for (int64_t i = c * kChunk; i < end; ++i) out[i] = gate[i] * Sigmoid(gate[i]) * up[i];
  }
}

template <typename T>
void SwigluBackward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t end = std::min(n, (c + 1) * kChunk);
#pragma omp simd
    for (int64_t i = c * kChunk; i < end; ++i) {
      const T g = gate[i];
      const T s = Sigmoid(g);
      // silu'(g) = s + g s (1 - s) with s = sigmoid(g).
      const T dsilu = s * (T(1) + g * (T(1) - s));
      const T dy = dout[i];
      dgate[i] = dy * up[i] * dsilu;
      dup[i] = dy * g * s;
    }
  }
}

template void SwigluForward<float>(float*, const float*, const float*, int64_t);
template void SwigluForward<double>(double*, const double*, const double*, int64_t);
template void SwigluBackward<float>(float*, float*, const float*, const float*, const float*,
                                    int64_t);
template void SwigluBackward<double>(double*, double*, const double*, const double*, const double*,
                                     int64_t);

}  // namespace moe::cpu
