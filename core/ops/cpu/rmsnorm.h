// RMSNorm on the CPU, as in Mixtral: y = x / sqrt(mean(x^2) + eps) * weight.
//   x, y, dx, dy: [rows, dim]   weight, dweight: [dim]   inv_rms: [rows]
// Forward saves inv_rms = 1 / sqrt(mean(x^2) + eps) for backward.
// Gradient rule: dweight += (parameter), dx = (activation).
#ifndef MOE_CORE_OPS_CPU_RMSNORM_H_
#define MOE_CORE_OPS_CPU_RMSNORM_H_

#include <cstdint>

namespace moe::cpu {

template <typename T>
void RmsNormForward(T* y, T* inv_rms, const T* x, const T* weight, int64_t rows, int64_t dim,
                    double eps);

template <typename T>
void RmsNormBackward(T* dx, T* dweight, const T* dy, const T* x, const T* weight, const T* inv_rms,
                     int64_t rows, int64_t dim);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_RMSNORM_H_
