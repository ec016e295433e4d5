#include "core/ops/cpu/swiglu.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace moe::cpu {
namespace {

// Elements per OpenMP chunk: large enough to amortise scheduling, small
// enough that a few-thousand-wide MLP row still spreads over the threads.
constexpr int64_t kChunk = 4096;

// Branch-free clamp: a select through bit masks. A plain `x < lo ? lo : x`
// is not if-converted under the default -ftrapping-math (GCC sinks the
// following multiply into the branches), which stops the loop vectorising.
// NaN passes through unchanged.
inline float Clamp(float x, float lo, float hi) {
  const int32_t below = -static_cast<int32_t>(x < lo);
  const int32_t above = -static_cast<int32_t>(x > hi);
  int32_t bits = std::bit_cast<int32_t>(x);
  bits = (bits & ~below) | (std::bit_cast<int32_t>(lo) & below);
  bits = (bits & ~above) | (std::bit_cast<int32_t>(hi) & above);
  return std::bit_cast<float>(bits);
}

// e^x for fp32 in straight-line arithmetic, so that `omp simd` loops
// vectorise (a call to expf does not, and costs ~4 ns per element, ten times
// the memory traffic). Error within 2 ulp; NaN propagates. x is clamped to
// [-87, 88], which keeps 2^n a normal number: beyond that, 1 / (1 + e^-x) is
// already 0 or 1 to fp32 precision.
inline float FastExp(float x) {
  x = Clamp(x, -87.0f, 88.0f);
  // Round x / ln2 to the nearest integer n by adding 1.5 * 2^23: n then sits
  // in the low mantissa bits of `shifted`.
  constexpr float kShift = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  const int32_t n_int = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kShift);
  // r = x - n ln2 in [-ln2/2, ln2/2], with ln2 = hi - lo split so that n * hi
  // is exact.
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  // Taylor series to degree 7: the remainder r^8 / 8! < 6e-9, below 1/2 ulp.
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * std::bit_cast<float>((n_int + 127) << 23);
}

// fp64 runs only in gradient checks, where exactness beats speed.
inline double FastExp(double x) { return std::exp(x); }

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
