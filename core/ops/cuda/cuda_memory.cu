// CUDA device memory through the runtime API, on the current device.
#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/cuda_memory.h"
#include "core/ops/cuda/kernels.h"

namespace moe::cuda {
namespace {

int QueryDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No driver or no GPU: a CPU-only machine with the toolkit installed.
    // Clear the error so that it does not surface from a later call.
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

cudaMemcpyKind CopyKind(bool dst_on_gpu, bool src_on_gpu) {
  if (dst_on_gpu) return src_on_gpu ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice;
  return src_on_gpu ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost;
}

}  // namespace

int DeviceCount() {
  // The set of visible devices is fixed for the life of the process.
  static const int count = QueryDeviceCount();
  return count;
}

void* Allocate(size_t bytes) {
  void* ptr = nullptr;
  CUDA_CHECK(cudaMalloc(&ptr, bytes)) << "allocating " << bytes << " bytes on the GPU";
  return ptr;
}

void Free(void* ptr) {
  const cudaError_t status = cudaFree(ptr);
  // A tensor destroyed at exit, after the runtime has shut down: the driver
  // reclaims the memory with the process, so there is nothing to report.
  if (status == cudaErrorCudartUnloading) {
    (void)cudaGetLastError();
    return;
  }
  CUDA_CHECK(status) << "from cudaFree(" << ptr << ")";
}

// cudaMemcpy on the legacy default stream waits for the kernels launched
// before it, and returns once the data has arrived when the destination is
// the host, so Tensor::To(kCpu) sees every result.
void Copy(void* dst, bool dst_on_gpu, const void* src, bool src_on_gpu, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, CopyKind(dst_on_gpu, src_on_gpu)))
      << "copying " << bytes << " bytes";
}

// Stream-ordered like the kernels, so a Zeros() tensor is zero for them.
void Zero(void* ptr, size_t bytes) {
  CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, /*stream=*/0)) << "zeroing " << bytes << " bytes";
}

void Synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace moe::cuda
