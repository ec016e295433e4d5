#include "core/device_memory.h"

#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "core/ops/cuda/cuda_memory.h"

namespace moe {

void* DeviceAllocate(Device device, size_t bytes) {
  if (bytes == 0) return nullptr;
  if (device == Device::kCuda) return cuda::Allocate(bytes);
  const size_t rounded = (bytes + kCpuAlignment - 1) / kCpuAlignment * kCpuAlignment;
  void* ptr = std::aligned_alloc(kCpuAlignment, rounded);
  MOE_CHECK(ptr != nullptr) << "out of host memory allocating " << bytes << " bytes";
  return ptr;
}

void DeviceFree(Device device, void* ptr) {
  if (ptr == nullptr) return;
  if (device == Device::kCuda) {
    cuda::Free(ptr);
  } else {
    std::free(ptr);
  }
}

void DeviceCopy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  if (dst_device == Device::kCpu && src_device == Device::kCpu) {
    std::memcpy(dst, src, bytes);
  } else {
    cuda::Copy(dst, dst_device == Device::kCuda, src, src_device == Device::kCuda, bytes);
  }
}

void DeviceZero(Device device, void* ptr, size_t bytes) {
  if (bytes == 0) return;
  if (device == Device::kCuda) {
    cuda::Zero(ptr, bytes);
  } else {
    std::memset(ptr, 0, bytes);
  }
}

bool CudaAvailable() { return cuda::DeviceCount() > 0; }

}  // namespace moe
