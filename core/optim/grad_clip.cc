#include "core/optim/grad_clip.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe {
namespace {

// Elements per block of the squared-norm sum; each block is summed by one
// thread, and the block sums are added in block order.
constexpr int64_t kBlock = 1 << 14;

const Tensor& CheckedGrad(const Parameter* param, const char* caller) {
  MOE_CHECK(param != nullptr) << caller << ": null parameter";
  const Tensor& grad = param->grad;
  MOE_CHECK(grad.defined()) << caller << ": " << param->name << " has no grad";
  MOE_CHECK(grad.device() == Device::kCpu)
      << caller << ": " << param->name << " grad is on " << DeviceName(grad.device())
      << "; the CUDA path is not built yet";
  MOE_CHECK(grad.dtype() == DType::kF32 || grad.dtype() == DType::kF64)
      << caller << ": " << param->name << " grad must be f32 or f64, got " << grad.Describe();
  return grad;
}

template <typename T>
double SumSquares(const T* x, int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks));
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kBlock);
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = b * kBlock; i < end; ++i) sum += static_cast<double>(x[i]) * x[i];
    partial[static_cast<size_t>(b)] = sum;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template <typename T>
void Scale(T* x, int64_t n, T factor) {
#pragma omp parallel for simd schedule(static) if (n >= 4 * kBlock)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

}  // namespace

double GradSquaredNorm(const std::vector<Parameter*>& params) {
  double total = 0;
  for (const Parameter* param : params) {
    const Tensor& grad = CheckedGrad(param, "GradSquaredNorm");
    total += grad.dtype() == DType::kF64 ? SumSquares(grad.data<double>(), grad.numel())
                                         : SumSquares(grad.data<float>(), grad.numel());
  }
  return total;
}

double ClipGradNorm(const std::vector<Parameter*>& params, double max_norm,
                    double total_squared_norm) {
  MOE_CHECK(max_norm > 0 && std::isfinite(max_norm))
      << "ClipGradNorm: max_norm must be finite and > 0, got " << max_norm;
  MOE_CHECK(!(total_squared_norm < 0))
      << "ClipGradNorm: total_squared_norm must be >= 0, got " << total_squared_norm;
  const double norm = std::sqrt(total_squared_norm);
  if (!std::isfinite(norm)) return norm;  // the caller skips the step; see the header
  const double coeff = max_norm / (norm + 1e-6);
  if (coeff >= 1.0) return norm;
  for (const Parameter* param : params) {
    const Tensor& grad = CheckedGrad(param, "ClipGradNorm");
    if (grad.dtype() == DType::kF64) {
      Scale(grad.data<double>(), grad.numel(), coeff);
    } else {
      Scale(grad.data<float>(), grad.numel(), static_cast<float>(coeff));
    }
  }
  return norm;
}

double ClipGradNormLocal(const std::vector<Parameter*>& params, double max_norm) {
  return ClipGradNorm(params, max_norm, GradSquaredNorm(params));
}

}  // namespace moe
