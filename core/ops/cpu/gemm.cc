#include "core/ops/cpu/gemm.h"

#include <cblas.h>

#include "core/check.h"

namespace moe::cpu {
namespace {

void CheckGemmArgs(int64_t m, int64_t n, int64_t k) {
  MOE_CHECK(m >= 0 && n >= 0 && k >= 0) << "Gemm sizes m=" << m << " n=" << n << " k=" << k;
  MOE_CHECK(m < (1ll << 31) && n < (1ll << 31) && k < (1ll << 31))
      << "Gemm sizes exceed BLAS int range: m=" << m << " n=" << n << " k=" << k;
}

CBLAS_TRANSPOSE Op(bool trans) { return trans ? CblasTrans : CblasNoTrans; }

}  // namespace

template <>
void Gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  CheckGemmArgs(m, n, k);
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, Op(trans_a), Op(trans_b), static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

template <>
void Gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                  const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                  double* c, int64_t ldc) {
  CheckGemmArgs(m, n, k);
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, Op(trans_a), Op(trans_b), static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

}  // namespace moe::cpu
