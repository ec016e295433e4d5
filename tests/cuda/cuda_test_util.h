// Shared by the CUDA kernel tests: every kernel runs on the GPU and, on the
// same inputs, through its CPU kernel in double; the two must agree.
//
// Inputs are drawn in fp32 and cast to the dtype under test, so a bf16 test
// feeds both sides the same bf16-rounded values and measures only the GPU's
// arithmetic and its final rounding.
#ifndef MOE_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define MOE_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <string>

#include "core/device_memory.h"
#include "core/tensor.h"
#include "tests/test_util.h"

namespace moe::testing {

inline constexpr char kNoGpuMessage[] = "no GPU visible: CUDA kernel tests skipped";

// fp32 outputs computed in fp32 from identical inputs differ from a double
// reference only by fp32 rounding, ~1e-7 relative per operation.
inline constexpr double kF32Tolerance = 1e-5;
// A bf16 output is the fp32 result rounded once to 8 significant bits, a
// relative error of at most 2^-9 ~ 2e-3 of that element; 5e-3 leaves a 2.5x
// margin and still catches any wrong term.
inline constexpr double kBf16Tolerance = 5e-3;

inline double Tolerance(DType output_dtype) {
  return output_dtype == DType::kBF16 ? kBf16Tolerance : kF32Tolerance;
}

// Normal(0, std^2) values drawn in fp32, then rounded to `dtype` (CPU).
inline Tensor RandomInput(const Shape& shape, DType dtype, uint64_t seed, double std = 1.0) {
  return RandomTensor(shape, DType::kF32, seed, std).Cast(dtype);
}

inline Tensor Gpu(const Tensor& t) { return t.To(Device::kCuda); }
inline Tensor Cpu(const Tensor& t) { return t.To(Device::kCpu); }
// The exact values of a CPU floating tensor in double, for the reference.
inline Tensor F64(const Tensor& t) { return t.Cast(DType::kF64); }

// The parameter of the dtype-parameterised tests; printed by name so that
// test listings read "f32" rather than a byte dump.
struct ActivationDType {
  DType dtype;
  friend void PrintTo(const ActivationDType& p, std::ostream* os) { *os << DTypeName(p.dtype); }
};

inline auto AllActivationDTypes() {
  return ::testing::Values(ActivationDType{DType::kF32}, ActivationDType{DType::kBF16});
}

inline std::string DTypeParamName(const ::testing::TestParamInfo<ActivationDType>& info) {
  return std::string(DTypeName(info.param.dtype));
}

// Tests run for kF32 and kBF16 activations; skipped without a GPU.
class CudaDTypeTest : public ::testing::TestWithParam<ActivationDType> {
 protected:
  void SetUp() override {
    if (!CudaAvailable()) GTEST_SKIP() << kNoGpuMessage;
  }
  DType dtype() const { return GetParam().dtype; }
};

}  // namespace moe::testing

#define MOE_SKIP_WITHOUT_GPU() \
  if (!::moe::CudaAvailable()) GTEST_SKIP() << ::moe::testing::kNoGpuMessage

#endif  // MOE_TESTS_CUDA_CUDA_TEST_UTIL_H_
