// cuda::Gemm (cuBLAS) against cpu::Gemm in double, for every transpose
// combination and for fp32 and bf16 inputs with an fp32 or input-typed C.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/ops/cpu/gemm.h"
#include "core/ops/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe {
namespace {

using testing::Cpu;
using testing::CudaDTypeTest;
using testing::F64;
using testing::Gpu;
using testing::MaxRelativeError;
using testing::RandomInput;
using testing::Tolerance;

// Odd sizes, so that no dimension is a multiple of a cuBLAS tile.
constexpr int64_t kM = 33, kN = 47, kK = 70;

class CudaGemmTest : public CudaDTypeTest {};

TEST_P(CudaGemmTest, MatchesCpuForAllTransposesAndOutputTypes) {
  const DType dtype = this->dtype();
  const float alpha = 0.75f, beta = -0.5f;
  uint64_t seed = 100;
  for (bool trans_a : {false, true}) {
    for (bool trans_b : {false, true}) {
      for (DType c_dtype : {dtype, DType::kF32}) {
        SCOPED_TRACE(::testing::Message() << "trans_a=" << trans_a << " trans_b=" << trans_b
                                          << " c=" << DTypeName(c_dtype));
        const Tensor a = RandomInput(trans_a ? Shape{kK, kM} : Shape{kM, kK}, dtype, ++seed);
        const Tensor b = RandomInput(trans_b ? Shape{kN, kK} : Shape{kK, kN}, dtype, ++seed);
        const Tensor c0 = RandomInput({kM, kN}, c_dtype, ++seed);

        Tensor expected = F64(c0);
        cpu::Gemm<double>(trans_a, trans_b, kM, kN, kK, alpha, F64(a).data<double>(), a.dim(1),
                          F64(b).data<double>(), b.dim(1), beta, expected.data<double>(), kN);

        Tensor c = Gpu(c0);
        cuda::Gemm(trans_a, trans_b, alpha, Gpu(a), Gpu(b), beta, &c);
        const Tensor got = Cpu(c);
        EXPECT_EQ(got.dtype(), c_dtype);
        EXPECT_LT(MaxRelativeError(got, expected), Tolerance(c_dtype));
      }
    }
  }
}

// Layers allocate C uninitialised and call with beta = 0: C must not be read.
TEST_P(CudaGemmTest, BetaZeroIgnoresGarbageInC) {
  const DType dtype = this->dtype();
  const Tensor a = RandomInput({kM, kK}, dtype, 1);
  const Tensor b = RandomInput({kK, kN}, dtype, 2);
  Tensor nan_c = Tensor::Empty({kM, kN}, dtype);
  for (int64_t i = 0; i < nan_c.numel(); ++i) {
    nan_c.SetFromDouble(i, std::numeric_limits<double>::quiet_NaN());
  }
  Tensor expected = Tensor::Zeros({kM, kN}, DType::kF64);
  cpu::Gemm<double>(false, false, kM, kN, kK, 1.0, F64(a).data<double>(), kK, F64(b).data<double>(),
                    kN, 0.0, expected.data<double>(), kN);
  Tensor c = Gpu(nan_c);
  cuda::Gemm(false, false, 1.0f, Gpu(a), Gpu(b), 0.0f, &c);
  const Tensor got = Cpu(c);
  for (int64_t i = 0; i < got.numel(); ++i) ASSERT_FALSE(std::isnan(got.GetAsDouble(i))) << i;
  EXPECT_LT(MaxRelativeError(got, expected), Tolerance(dtype));
}

// One row times one column, each of length 1: a degenerate but legal shape.
TEST_P(CudaGemmTest, OuterProductWithKOne) {
  const DType dtype = this->dtype();
  const Tensor a = RandomInput({5, 1}, dtype, 3);
  const Tensor b = RandomInput({1, 4}, dtype, 4);
  Tensor c = Tensor::Empty({5, 4}, DType::kF32, Device::kCuda);
  cuda::Gemm(false, false, 1.0f, Gpu(a), Gpu(b), 0.0f, &c);
  const Tensor got = Cpu(c);
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 4; ++j) {
      EXPECT_FLOAT_EQ(got.GetAsDouble(i * 4 + j), a.GetAsDouble(i) * b.GetAsDouble(j));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaGemmTest, testing::AllActivationDTypes(),
                         testing::DTypeParamName);

// Runs without a GPU: the device check comes before anything touches CUDA.
TEST(CudaGemmDeathTest, CpuTensorsAreRejectedByName) {
  const Tensor a = Tensor::Zeros({2, 3}, DType::kF32);
  Tensor c = Tensor::Zeros({2, 2}, DType::kF32);
  EXPECT_DEATH(cuda::Gemm(false, false, 1.0f, a, a, 0.0f, &c),
               "cuda::Gemm: a must be an f32 or bf16 CUDA tensor \\[m, k\\], got f32\\[2, 3\\] "
               "on cpu");
}

TEST(CudaGemmDeathTest, MismatchedShapesNameTheOperands) {
  MOE_SKIP_WITHOUT_GPU();
  const Tensor a = Tensor::Zeros({4, 3}, DType::kF32, Device::kCuda);
  const Tensor b = Tensor::Zeros({5, 6}, DType::kF32, Device::kCuda);
  const Tensor b_bf16 = Tensor::Zeros({3, 6}, DType::kBF16, Device::kCuda);
  Tensor c = Tensor::Zeros({4, 6}, DType::kF32, Device::kCuda);
  Tensor wrong_c = Tensor::Zeros({6, 4}, DType::kF32, Device::kCuda);
  const Tensor b_ok = Tensor::Zeros({3, 6}, DType::kF32, Device::kCuda);
  EXPECT_DEATH(cuda::Gemm(false, false, 1.0f, a, b, 0.0f, &c),
               "cuda::Gemm: inner dimensions differ");
  EXPECT_DEATH(cuda::Gemm(false, false, 1.0f, a, b_bf16, 0.0f, &c),
               "cuda::Gemm: a and b must share a dtype");
  EXPECT_DEATH(cuda::Gemm(false, false, 1.0f, a, b_ok, 0.0f, &wrong_c),
               "cuda::Gemm: c must be f32\\[4, 6\\] on cuda, got f32\\[6, 4\\] on cuda");
}

}  // namespace
}  // namespace moe
