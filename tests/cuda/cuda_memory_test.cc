// Device memory: counting devices (also on machines without a GPU) and
// tensors travelling CPU -> CUDA -> CPU bit for bit.
#include "core/ops/cuda/cuda_memory.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/ops/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe {
namespace {

using testing::Cpu;
using testing::Gpu;
using testing::RandomIds;
using testing::RandomInput;

// Runs everywhere: without a driver or GPU the count is 0, not an error.
TEST(CudaMemoryTest, DeviceCountIsZeroOrMoreAndMatchesCudaAvailable) {
  const int count = cuda::DeviceCount();
  EXPECT_GE(count, 0);
  EXPECT_EQ(CudaAvailable(), count > 0);
  EXPECT_EQ(cuda::DeviceCount(), count);
}

bool SameBytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

TEST(CudaMemoryTest, RoundTripKeepsEveryBit) {
  MOE_SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Tensor host = RandomInput({3, 1001}, dtype, 11);
    const Tensor device = Gpu(host);
    EXPECT_EQ(device.device(), Device::kCuda);
    EXPECT_EQ(device.shape(), host.shape());
    EXPECT_TRUE(SameBytes(Cpu(device), host));
    // Device to device, through Clone.
    EXPECT_TRUE(SameBytes(Cpu(device.Clone()), host));
  }
  const Tensor ids = RandomIds({257}, 50000, 12);
  EXPECT_TRUE(SameBytes(Cpu(Gpu(ids)), ids));
  Tensor ids64 = Tensor::Empty({5}, DType::kI64);
  for (int64_t i = 0; i < 5; ++i) ids64.data<int64_t>()[i] = (int64_t{1} << 40) + i;
  EXPECT_TRUE(SameBytes(Cpu(Gpu(ids64)), ids64));
}

TEST(CudaMemoryTest, ViewsCopyFromTheirOffset) {
  MOE_SKIP_WITHOUT_GPU();
  const Tensor host = RandomInput({6, 7}, DType::kF32, 13);
  Tensor device = Tensor::Zeros({6, 7}, DType::kF32, Device::kCuda);
  // Write rows 2..4 only, through a view, and read them back through another.
  Tensor rows = device.Slice(2, 4);
  rows.CopyFrom(host.Slice(2, 4));
  const Tensor back = Cpu(device);
  for (int64_t i = 0; i < host.numel(); ++i) {
    const bool written = i >= 2 * 7 && i < 4 * 7;
    EXPECT_EQ(back.GetAsDouble(i), written ? host.GetAsDouble(i) : 0.0) << "element " << i;
  }
  EXPECT_TRUE(SameBytes(Cpu(device.View(15, {4})), host.View(15, {4})));
}

TEST(CudaMemoryTest, ZerosAreZeroAfterSynchronize) {
  MOE_SKIP_WITHOUT_GPU();
  Tensor device = Gpu(RandomInput({1000}, DType::kF32, 14));
  device.SetZero();
  cuda::Synchronize();
  const Tensor back = Cpu(device);
  for (int64_t i = 0; i < back.numel(); ++i) ASSERT_EQ(back.GetAsDouble(i), 0.0) << i;
}

}  // namespace
}  // namespace moe
