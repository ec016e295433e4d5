#include "core/ops/cpu/rmsnorm.h"

#include <cmath>
#include <vector>

#include <omp.h>

namespace moe::cpu {

template <typename T>
void RmsNormForward(T* y, T* inv_rms, const T* x, const T* weight, int64_t rows, int64_t dim,
                    double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    // Accumulate in double for fp32 inputs too: one pass, and the mean of
    // squares of a wide row loses digits in fp32.
    double sum_squares = 0;
#pragma omp simd reduction(+ : sum_squares)
    for (int64_t i = 0; i < dim; ++i) sum_squares += static_cast<double>(xr[i]) * xr[i];
    const T scale = static_cast<T>(1.0 / std::sqrt(sum_squares / dim + eps));
    inv_rms[r] = scale;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

template <typename T>
void RmsNormBackward(T* dx, T* dweight, const T* dy, const T* x, const T* weight, const T* inv_rms,
                     int64_t rows, int64_t dim) {
  // dweight is a reduction over rows: each thread sums into its own buffer,
  // then the buffers are added in thread order (deterministic for a fixed
  // thread count).
  const int threads = omp_get_max_threads();
  std::vector<T> partial(static_cast<size_t>(threads) * dim, T(0));
#pragma omp parallel num_threads(threads)
  {
    T* my_dweight = partial.data() + static_cast<int64_t>(omp_get_thread_num()) * dim;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * dim;
      const T* dyr = dy + r * dim;
      T* dxr = dx + r * dim;
      const T s = inv_rms[r];
      // y = x * s * w with s = (mean(x^2) + eps)^(-1/2), so
      // dx = s * (dy * w) - x * s^3 / dim * sum(dy * w * x).
      double dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < dim; ++i) dot += static_cast<double>(dyr[i]) * weight[i] * xr[i];
      const T coefficient = static_cast<T>(dot * s * s * s / dim);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        dxr[i] = s * dyr[i] * weight[i] - xr[i] * coefficient;
        my_dweight[i] += dyr[i] * xr[i] * s;
      }
    }
  }
  for (int t = 0; t < threads; ++t) {
    const T* p = partial.data() + static_cast<int64_t>(t) * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) dweight[i] += p[i];
  }
}

template void RmsNormForward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                    double);
template void RmsNormForward<double>(double*, double*, const double*, const double*, int64_t,
                                     int64_t, double);
template void RmsNormBackward<float>(float*, float*, const float*, const float*, const float*,
                                     const float*, int64_t, int64_t);
template void RmsNormBackward<double>(double*, double*, const double*, const double*, const double*,
                                      const double*, int64_t, int64_t);

}  // namespace moe::cpu
