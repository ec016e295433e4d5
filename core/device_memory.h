// Raw memory on a device: the allocator behind Tensor storage and the copies
// between devices. The CPU side is plain aligned memory; the CUDA side lives in
// core/ops/cuda/cuda_memory.cu, or reports that the build has no CUDA.
#ifndef MOE_CORE_DEVICE_MEMORY_H_
#define MOE_CORE_DEVICE_MEMORY_H_

#include <cstddef>

#include "core/dtype.h"

namespace moe {

// Alignment of CPU allocations: one cache line, and enough for AVX-512 loads.
inline constexpr size_t kCpuAlignment = 64;

void* DeviceAllocate(Device device, size_t bytes);
void DeviceFree(Device device, void* ptr);
// Copies `bytes` between any two devices; synchronous with respect to the host.
void DeviceCopy(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
void DeviceZero(Device device, void* ptr, size_t bytes);

// True when this build has the CUDA backend and at least one GPU is visible.
bool CudaAvailable();

}  // namespace moe

#endif  // MOE_CORE_DEVICE_MEMORY_H_
