#include "core/tensor.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/device_memory.h"

namespace moe {
namespace {

TEST(TensorTest, ShapeAndBytes) {
  Tensor t = Tensor::Zeros({2, 3, 4}, DType::kF32);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.dim(-1), 4);
  EXPECT_EQ(t.Describe(), "f32[2, 3, 4] on cpu");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % kCpuAlignment, 0u);
}

TEST(TensorTest, CopiesShareStorageAndCloneDoesNot) {
  Tensor a = Tensor::FromVector({3}, {1, 2, 3});
  Tensor shallow = a;
  Tensor deep = a.Clone();
  a.data<float>()[0] = 7;
  EXPECT_EQ(shallow.data<float>()[0], 7);
  EXPECT_EQ(deep.data<float>()[0], 1);
}

TEST(TensorTest, SliceAndViewAddressTheRightElements) {
  Tensor a = Tensor::FromVector({3, 2}, {0, 1, 2, 3, 4, 5});
  Tensor rows = a.Slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 2}));
  EXPECT_EQ(rows.GetAsDouble(0), 2);
  Tensor view = a.View(3, {3});
  EXPECT_EQ(view.GetAsDouble(2), 5);
  view.SetFromDouble(0, -1);
  EXPECT_EQ(a.GetAsDouble(3), -1);
}

TEST(TensorTest, BFloat16RoundsToNearestEven) {
  // 1 + 2^-8 lies exactly between two bf16 values; ties go to even (1.0).
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + 1.0f / 256)), 1.0f);
  // 1 + 3 * 2^-8 ties between 1 + 2^-7 and 1 + 2^-6; even is 1 + 2^-6.
  EXPECT_EQ(static_cast<float>(BFloat16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
  EXPECT_EQ(static_cast<float>(BFloat16(-2.5f)), -2.5f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(static_cast<float>(BFloat16(nan))));
}

TEST(TensorTest, CastRoundTripsThroughDouble) {
  Tensor a = Tensor::FromVector({4}, {0.1f, -2.0f, 3.5f, 1e-3f});
  Tensor d = a.Cast(DType::kF64);
  Tensor back = d.Cast(DType::kF32);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(back.data<float>()[i], a.data<float>()[i]);
}

TEST(TensorTest, ZeroSizedTensorsWork) {
  Tensor t = Tensor::Zeros({0, 5}, DType::kF32);
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.numel(), 0);
  Tensor c = t.Clone();
  EXPECT_EQ(c.shape(), (Shape{0, 5}));
}

TEST(TensorDeathTest, WrongTypedAccessIsCaught) {
  Tensor t = Tensor::Zeros({2}, DType::kF32);
  EXPECT_DEATH(t.data<double>(), "tensor is f32\\[2\\] on cpu, accessed as f64");
}

TEST(TensorDeathTest, BadReshapeIsCaught) {
  Tensor t = Tensor::Zeros({2, 3}, DType::kF32);
  EXPECT_DEATH(t.Reshape({4}), "cannot reshape f32\\[2, 3\\] on cpu to \\[4\\]");
}

TEST(TensorTest, CudaIsReportedAbsentOrUsable) {
  if (!CudaAvailable()) GTEST_SKIP() << "no GPU visible to this build";
  Tensor a = Tensor::FromVector({3}, {1, 2, 3});
  Tensor back = a.To(Device::kCuda).To(Device::kCpu);
  EXPECT_EQ(back.ToFloatVector(), a.ToFloatVector());
}

}  // namespace
}  // namespace moe
