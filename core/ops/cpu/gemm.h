// Row-major GEMM on the CPU through OpenBLAS:
//   C[m, n] = alpha * op(A) op(B) + beta * C,  op(X) = X or X^T.
// A is [m, k] (or [k, m] when trans_a), B is [k, n] (or [n, k] when trans_b);
// lda/ldb/ldc are row strides in elements, so blocks of larger matrices work.
// Called inside an OpenMP region it runs on the calling thread only (we link
// OpenBLAS's OpenMP build, which does not nest).
#ifndef MOE_CORE_OPS_CPU_GEMM_H_
#define MOE_CORE_OPS_CPU_GEMM_H_

#include <cstdint>

namespace moe::cpu {

template <typename T>
void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_GEMM_H_
