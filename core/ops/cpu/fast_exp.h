// e^x in straight-line arithmetic for the CPU kernels' `omp simd` loops: a
// call to expf does not vectorise and costs ~4 ns per element, more than the
// memory traffic of the loop around it. Used where exp dominates an
// elementwise pass (SwiGLU, attention's softmax).
#ifndef MOE_CORE_OPS_CPU_FAST_EXP_H_
#define MOE_CORE_OPS_CPU_FAST_EXP_H_

#include <bit>
#include <cmath>
#include <cstdint>

namespace moe::cpu {

// Branch-free clamp: a select through bit masks. A plain `x < lo ? lo : x`
// is not if-converted under the default -ftrapping-math (GCC sinks the
// following multiply into the branches), which stops the loop vectorising.
// NaN passes through unchanged.
inline float ClampForExp(float x, float lo, float hi) {
  const int32_t below = -static_cast<int32_t>(x < lo);
  const int32_t above = -static_cast<int32_t>(x > hi);
  int32_t bits = std::bit_cast<int32_t>(x);
  bits = (bits & ~below) | (std::bit_cast<int32_t>(lo) & below);
  bits = (bits & ~above) | (std::bit_cast<int32_t>(hi) & above);
  return std::bit_cast<float>(bits);
}

// e^x for fp32. Error within 2 ulp; NaN propagates. x is clamped to [-87,
// 88], which keeps 2^n a normal number: e^-87 = 1.6e-38 stands in for
// anything smaller and e^88 for anything larger, which is what a softmax
// (terms next to its largest, 1) or a sigmoid (1 / (1 + e^-x)) gives to fp32
// precision anyway.
inline float FastExp(float x) {
  x = ClampForExp(x, -87.0f, 88.0f);
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

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_FAST_EXP_H_
