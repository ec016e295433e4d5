// Row-major GEMM on cuBLAS. cuBLAS is column-major, and a row-major [m, n]
// matrix is the column-major [n, m] matrix of its transpose, so
//   C = op(A) op(B)  (row-major)  <=>  C^T = op(B)^T op(A)^T  (column-major),
// which is one cublasGemmEx call with A and B swapped and m and n swapped.
#include <cublas_v2.h>

#include <algorithm>
#include <cstdint>

#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace moe::cuda {
namespace {

constexpr const char* kOp = "cuda::Gemm";

// One handle for the process, created on first use on the current device and
// never destroyed: destroying it from a static destructor can run after the
// CUDA runtime has shut down. It runs on the default stream, like our kernels.
cublasHandle_t Handle() {
  static const cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    CUBLAS_CHECK(cublasCreate(&h)) << "creating the cuBLAS handle";
    return h;
  }();
  return handle;
}

cudaDataType_t CudaType(DType dtype) { return dtype == DType::kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

void Gemm(bool trans_a, bool trans_b, float alpha, const Tensor& a, const Tensor& b, float beta,
          Tensor* c) {
  CheckActivation(a, 2, trans_a ? "[k, m]" : "[m, k]", kOp, "a");
  CheckActivation(b, 2, trans_b ? "[n, k]" : "[k, n]", kOp, "b");
  MOE_CHECK(a.dtype() == b.dtype())
      << kOp << ": a and b must share a dtype, got a " << a.Describe() << " and b " << b.Describe();
  const int64_t m = trans_a ? a.dim(1) : a.dim(0);
  const int64_t k = trans_a ? a.dim(0) : a.dim(1);
  const int64_t n = trans_b ? b.dim(0) : b.dim(1);
  const int64_t k_b = trans_b ? b.dim(1) : b.dim(0);
  MOE_CHECK(k == k_b) << kOp << ": inner dimensions differ: op(a) is [" << m << ", " << k << "] (a "
                      << a.Describe() << (trans_a ? ", transposed" : "") << "), op(b) is [" << k_b
                      << ", " << n << "] (b " << b.Describe() << (trans_b ? ", transposed" : "")
                      << ")";
  MOE_CHECK(c != nullptr) << kOp << ": c is null";
  MOE_CHECK(c->defined() && c->device() == Device::kCuda &&
            (c->dtype() == a.dtype() || c->dtype() == DType::kF32) && c->shape() == (Shape{m, n}))
      << kOp << ": c must be " << (a.dtype() == DType::kF32 ? "f32" : "bf16 or f32 ") << "[" << m
      << ", " << n << "] on cuda, got " << DescribeOrUndefined(*c);
  CheckFitsInt(m, kOp, "m");
  CheckFitsInt(n, kOp, "n");
  CheckFitsInt(k, kOp, "k");
  if (m == 0 || n == 0) return;

  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // Leading dimensions are the row strides of the row-major tensors as stored
  // (cuBLAS rejects 0 even when k = 0 leaves nothing to read).
  const int lda = static_cast<int>(std::max<int64_t>(a.dim(1), 1));
  const int ldb = static_cast<int>(std::max<int64_t>(b.dim(1), 1));
  const int ldc = static_cast<int>(n);
  // CUBLAS_COMPUTE_32F without the TF32 math mode: fp32 inputs multiply in
  // full fp32, bf16 inputs accumulate in fp32.
  CUBLAS_CHECK(cublasGemmEx(Handle(), op_b, op_a, static_cast<int>(n), static_cast<int>(m),
                            static_cast<int>(k), &alpha, b.raw_data(), CudaType(b.dtype()), ldb,
                            a.raw_data(), CudaType(a.dtype()), lda, &beta, c->raw_data(),
                            CudaType(c->dtype()), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT))
      << "row-major m=" << m << " n=" << n << " k=" << k << " a " << a.Describe() << " b "
      << b.Describe() << " c " << c->Describe();
}

}  // namespace moe::cuda
