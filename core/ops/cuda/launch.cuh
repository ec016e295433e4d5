// Helpers shared by the CUDA kernels: bf16 <-> float conversion, warp and
// block reductions, launch sizes, and the argument checks every Tensor-level
// entry point runs before it launches anything.
#ifndef MOE_CORE_OPS_CUDA_LAUNCH_CUH_
#define MOE_CORE_OPS_CUDA_LAUNCH_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "core/check.h"
#include "core/tensor.h"

namespace moe::cuda {

inline constexpr int kWarpSize = 32;
// Threads per block of every kernel here: eight warps keep enough loads in
// flight on one row of a few thousand elements, and the block reductions
// below assume a multiple of the warp size.
inline constexpr int kBlockSize = 256;
// Grid-stride kernels use at most this many blocks; more add no parallelism
// on a GPU with ~132 SMs and only cost scheduling.
inline constexpr int64_t kMaxGridStrideBlocks = 1 << 16;

// ---- element conversion: activations are stored as T, arithmetic is fp32 ----

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    // Round to nearest even, as BFloat16::FromFloat on the host does.
    return __float2bfloat16_rn(x);
  }
}

// ---- reductions ----

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Sum of `v` over the block, returned to every thread. The order of additions
// is fixed by the block size, so results are deterministic. blockDim.x must be
// a multiple of 32. The leading barrier lets a block call this repeatedly (one
// row after another) without a reader of the previous result racing a writer.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float warp_sums[kWarpSize];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  v = WarpSum(v);
  __syncthreads();
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  return WarpSum(lane < warps ? warp_sums[lane] : 0.0f);
}

// ---- launch sizes ----

// Blocks for a grid-stride loop over `work` items with kBlockSize threads.
inline int GridStrideBlocks(int64_t work) {
  const int64_t blocks = (work + kBlockSize - 1) / kBlockSize;
  return static_cast<int>(std::clamp<int64_t>(blocks, 1, kMaxGridStrideBlocks));
}

// ---- host-side argument checks (the message names the op and the tensor) ----

inline std::string DescribeOrUndefined(const Tensor& t) {
  return t.defined() ? t.Describe() : std::string("an undefined tensor");
}

// `t` must be a CUDA tensor of exactly `dtype` and `shape`.
inline void CheckTensor(const Tensor& t, const Shape& shape, DType dtype, const char* op,
                        const char* name) {
  MOE_CHECK(t.defined() && t.device() == Device::kCuda && t.dtype() == dtype && t.shape() == shape)
      << op << ": " << name << " must be " << DTypeName(dtype) << ShapeToString(shape)
      << " on cuda, got " << DescribeOrUndefined(t);
}

// `t` must be a CUDA activation (kF32 or kBF16) with `ndim` dimensions;
// `layout` names them, e.g. "[rows, dim]".
inline void CheckActivation(const Tensor& t, int ndim, const char* layout, const char* op,
                            const char* name) {
  MOE_CHECK(t.defined() && t.device() == Device::kCuda &&
            (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16) && t.ndim() == ndim)
      << op << ": " << name << " must be an f32 or bf16 CUDA tensor " << layout << ", got "
      << DescribeOrUndefined(t);
}

// Grid dimension x and int kernel arguments are 31-bit.
inline void CheckFitsInt(int64_t value, const char* op, const char* what) {
  MOE_CHECK(value <= std::numeric_limits<int>::max())
      << op << ": " << what << " = " << value << " exceeds the 2^31 - 1 limit of a CUDA grid";
}

// Typed device pointer; __nv_bfloat16 has the bit layout of moe::BFloat16.
template <typename T>
T* Ptr(const Tensor& t) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    static_assert(sizeof(__nv_bfloat16) == sizeof(BFloat16));
    return reinterpret_cast<__nv_bfloat16*>(t.data<BFloat16>());
  } else {
    return t.data<T>();
  }
}

}  // namespace moe::cuda

#endif  // MOE_CORE_OPS_CUDA_LAUNCH_CUH_
