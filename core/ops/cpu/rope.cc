#include "core/ops/cpu/rope.h"

#include <cmath>
#include <vector>

namespace moe::cpu {

template <typename T>
void RopeTables(T* cos, T* sin, int64_t positions, int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  }
  // Angles in double, rounded to T once: for long contexts pos * inv_freq
  // reaches ~1e5 rad, where an fp32 product would be off by ~1e-2.
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * inv_freq[i];
      cos[p * half + i] = static_cast<T>(std::cos(angle));
      sin[p * half + i] = static_cast<T>(std::sin(angle));
    }
  }
}

namespace {

// Rotates each (x[i], x[i + half]) pair by +angle (sign = 1, forward) or by
// -angle (sign = -1, backward: the transpose of a rotation is its inverse).
template <typename T>
void Rotate(T* y, const T* x, const T* cos, const T* sin, int64_t batch, int64_t seq, int64_t heads,
            int64_t head_dim, int64_t pos_offset, T sign) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < batch * seq; ++row) {
    const int64_t pos = pos_offset + row % seq;
    const T* c = cos + pos * half;
    const T* s = sin + pos * half;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t base = (row * heads + h) * head_dim;
      const T* xr = x + base;
      T* yr = y + base;
      // Both halves are read before either is written, and iteration i
      // touches only elements i and i + half, so y may alias x.
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const T a = xr[i];
        const T b = xr[i + half];
        const T si = sign * s[i];
        yr[i] = a * c[i] - b * si;
        yr[i + half] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace

template <typename T>
void RopeForward(T* y, const T* x, const T* cos, const T* sin, int64_t batch, int64_t seq,
                 int64_t heads, int64_t head_dim, int64_t pos_offset) {
  Rotate(y, x, cos, sin, batch, seq, heads, head_dim, pos_offset, T(1));
}

template <typename T>
void RopeBackward(T* dx, const T* dy, const T* cos, const T* sin, int64_t batch, int64_t seq,
                  int64_t heads, int64_t head_dim, int64_t pos_offset) {
  Rotate(dx, dy, cos, sin, batch, seq, heads, head_dim, pos_offset, T(-1));
}

template void RopeTables<float>(float*, float*, int64_t, int64_t, double);
template void RopeTables<double>(double*, double*, int64_t, int64_t, double);
template void RopeForward<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                 int64_t, int64_t, int64_t);
template void RopeForward<double>(double*, const double*, const double*, const double*, int64_t,
                                  int64_t, int64_t, int64_t, int64_t);
template void RopeBackward<float>(float*, const float*, const float*, const float*, int64_t,
                                  int64_t, int64_t, int64_t, int64_t);
template void RopeBackward<double>(double*, const double*, const double*, const double*, int64_t,
                                   int64_t, int64_t, int64_t, int64_t);

}  // namespace moe::cpu
