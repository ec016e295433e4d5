// Stand-in for the CUDA backend in builds without nvcc: no GPU is ever
// visible, and any attempt to use one says how to get a CUDA build.
#include "core/check.h"
#include "core/ops/cuda/cuda_memory.h"
#include "core/ops/cuda/kernels.h"

namespace moe::cuda {
namespace {

[[noreturn]] void Unavailable(const char* what) {
  MOE_CHECK(false) << what
                   << " needs the CUDA backend, but this build has none: install the CUDA "
                      "toolkit (nvcc on PATH) and rebuild, or keep tensors on the CPU";
  std::abort();
}

}  // namespace

int DeviceCount() { return 0; }
void* Allocate(size_t) { Unavailable("cuda::Allocate"); }
void Free(void*) { Unavailable("cuda::Free"); }
void Copy(void*, bool, const void*, bool, size_t) { Unavailable("cuda::Copy"); }
void Zero(void*, size_t) { Unavailable("cuda::Zero"); }

void Synchronize() { Unavailable("cuda::Synchronize"); }
void Gemm(bool, bool, float, const Tensor&, const Tensor&, float, Tensor*) {
  Unavailable("cuda::Gemm");
}
void RmsNormForward(const Tensor&, const Tensor&, double, Tensor*, Tensor*) {
  Unavailable("cuda::RmsNormForward");
}
void RmsNormBackward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor*, Tensor*) {
  Unavailable("cuda::RmsNormBackward");
}
void RopeForward(const Tensor&, const Tensor&, const Tensor&, int64_t, Tensor*) {
  Unavailable("cuda::RopeForward");
}
void RopeBackward(const Tensor&, const Tensor&, const Tensor&, int64_t, Tensor*) {
  Unavailable("cuda::RopeBackward");
}
void SwigluForward(const Tensor&, const Tensor&, Tensor*) { Unavailable("cuda::SwigluForward"); }
void SwigluBackward(const Tensor&, const Tensor&, const Tensor&, Tensor*, Tensor*) {
  Unavailable("cuda::SwigluBackward");
}
void CrossEntropyForward(const Tensor&, const Tensor&, Tensor*, Tensor*) {
  Unavailable("cuda::CrossEntropyForward");
}
void CrossEntropyBackward(const Tensor&, const Tensor&, const Tensor&, float, Tensor*) {
  Unavailable("cuda::CrossEntropyBackward");
}

}  // namespace moe::cuda
