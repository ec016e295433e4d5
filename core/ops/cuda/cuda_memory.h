// CUDA device memory. Implemented by cuda_memory.cu in CUDA builds and by
// cuda_unavailable.cc otherwise, where every call but DeviceCount() fails with
// a message saying the build has no CUDA backend.
#ifndef MOE_CORE_OPS_CUDA_CUDA_MEMORY_H_
#define MOE_CORE_OPS_CUDA_CUDA_MEMORY_H_

#include <cstddef>

namespace moe::cuda {

int DeviceCount();  // 0 when the build has no CUDA or no GPU is visible
void* Allocate(size_t bytes);
void Free(void* ptr);
void Copy(void* dst, bool dst_on_gpu, const void* src, bool src_on_gpu, size_t bytes);
void Zero(void* ptr, size_t bytes);

}  // namespace moe::cuda

#endif  // MOE_CORE_OPS_CUDA_CUDA_MEMORY_H_
