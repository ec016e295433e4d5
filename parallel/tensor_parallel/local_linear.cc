#include "parallel/tensor_parallel/local_linear.h"

#include "core/ops/cpu/gemm.h"
#include "core/ops/cuda/kernels.h"

namespace moe {
namespace {

// c = beta c + op(a) op(b), 2-D row-major.
template <typename T>
void CpuGemm(bool trans_a, bool trans_b, const Tensor& a, const Tensor& b, double beta, Tensor* c) {
  const int64_t m = c->dim(0), n = c->dim(1);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  cpu::Gemm<T>(trans_a, trans_b, m, n, k, T(1), a.data<T>(), a.dim(1), b.data<T>(), b.dim(1),
               static_cast<T>(beta), c->data<T>(), n);
}

void Gemm(std::string_view who, bool trans_a, bool trans_b, const Tensor& a, const Tensor& b,
          double beta, Tensor* c) {
  MOE_CHECK(a.ndim() == 2 && b.ndim() == 2 && c->ndim() == 2)
      << who << ": GEMM operands must be 2-D, got " << a.Describe() << ", " << b.Describe()
      << " -> " << c->Describe();
  const int64_t m = trans_a ? a.dim(1) : a.dim(0), k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t kb = trans_b ? b.dim(1) : b.dim(0), n = trans_b ? b.dim(0) : b.dim(1);
  MOE_CHECK(k == kb && c->dim(0) == m && c->dim(1) == n)
      << who << ": GEMM shapes do not agree: " << a.Describe() << (trans_a ? "^T" : "") << " x "
      << b.Describe() << (trans_b ? "^T" : "") << " -> " << c->Describe();
  MOE_CHECK(a.device() == b.device() && a.device() == c->device() && a.dtype() == b.dtype())
      << who << ": GEMM operands differ in dtype or device: " << a.Describe() << ", "
      << b.Describe() << " -> " << c->Describe();
  if (a.device() == Device::kCuda) {
    cuda::Gemm(trans_a, trans_b, 1.0f, a, b, static_cast<float>(beta), c);
    return;
  }
  MOE_CHECK(c->dtype() == a.dtype() && (a.dtype() == DType::kF32 || a.dtype() == DType::kF64))
      << who << ": CPU GEMMs are kF32 or kF64 with one dtype, got " << a.Describe() << " -> "
      << c->Describe();
  if (a.dtype() == DType::kF64) {
    CpuGemm<double>(trans_a, trans_b, a, b, beta, c);
  } else {
    CpuGemm<float>(trans_a, trans_b, a, b, beta, c);
  }
}

}  // namespace

Tensor LocalLinearForward(std::string_view who, const Tensor& x, const Tensor& w) {
  MOE_CHECK(x.ndim() == 2 && w.ndim() == 2)
      << who << ": GEMM operands must be 2-D, got " << x.Describe() << " and " << w.Describe();
  Tensor y = Tensor::Empty({x.dim(0), w.dim(0)}, w.dtype(), w.device());
  Gemm(who, false, true, x, w, 0.0, &y);
  return y;
}

void LocalLinearInputGrad(std::string_view who, const Tensor& dy, const Tensor& w, bool accumulate,
                          Tensor* dx) {
  Gemm(who, false, false, dy, w, accumulate ? 1.0 : 0.0, dx);
}

void LocalLinearWeightGrad(std::string_view who, const Tensor& dy, const Tensor& x, Tensor* dw) {
  Gemm(who, true, false, dy, x, 1.0, dw);
}

}  // namespace moe
