#include "core/layers/residual.h"

#include <cstdint>

namespace moe {
namespace {

void CheckOperands(const char* what, const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.shape() == b.shape() && a.dtype() == b.dtype() && a.device() == b.device())
      << what << ": residual operands differ: " << a.Describe() << " vs " << b.Describe();
  MOE_CHECK(a.device() == Device::kCpu)
      << what << ": the residual add runs on the CPU only for now, got " << a.Describe();
  MOE_CHECK(a.dtype() == DType::kF32 || a.dtype() == DType::kF64)
      << what << ": the residual add is kF32 or kF64, got " << a.Describe();
}

template <typename T>
void AddKernel(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void AddInto(const Tensor& a, const Tensor& b, Tensor* out) {
  if (a.dtype() == DType::kF64) {
    AddKernel(out->data<double>(), a.data<double>(), b.data<double>(), a.numel());
  } else {
    AddKernel(out->data<float>(), a.data<float>(), b.data<float>(), a.numel());
  }
}

}  // namespace

Tensor ResidualAdd(const char* what, const Tensor& a, const Tensor& b) {
  CheckOperands(what, a, b);
  Tensor out = Tensor::Empty(a.shape(), a.dtype(), a.device());
  AddInto(a, b, &out);
  return out;
}

void ResidualAccumulate(const char* what, Tensor* a, const Tensor& b) {
  CheckOperands(what, *a, b);
  AddInto(*a, b, a);
}

}  // namespace moe
