// Rotary position embedding on the GPU, the split-half rotation of
// cpu::RopeForward/Backward: for i < D/2 at position p = pos_offset + s,
//   y[i] = x[i] cos - x[i + D/2] sin,   y[i + D/2] = x[i + D/2] cos + x[i] sin.
//   x, y: [batch, seq, heads, head_dim] T   cos, sin: [positions, head_dim / 2] f32
// One thread per (i, i + D/2) pair: it reads both before writing either, and
// no other thread touches them, so y may alias x. Backward rotates by -angle.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace moe::cuda {
namespace {

template <typename T>
__global__ void RopeKernel(T* y, const T* x, const float* cos_table, const float* sin_table,
                           int64_t pairs, int64_t seq, int64_t heads, int64_t half,
                           int64_t pos_offset, float sign) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += stride) {
    const int64_t i = p % half;
    const int64_t head_row = p / half;  // (b * seq + s) * heads + h
    const int64_t s = (head_row / heads) % seq;
    const int64_t table = (pos_offset + s) * half + i;
    const int64_t base = head_row * 2 * half;
    const float a = ToFloat(x[base + i]);
    const float b = ToFloat(x[base + i + half]);
    const float c = cos_table[table];
    const float sn = sign * sin_table[table];
    y[base + i] = FromFloat<T>(a * c - b * sn);
    y[base + i + half] = FromFloat<T>(b * c + a * sn);
  }
}

// Checks the arguments of RopeForward (sign = 1) or RopeBackward (sign = -1)
// and launches. `in` is x or dy, `out` is y or dx.
void Rope(const char* op, const char* in_name, const char* out_name, const Tensor& in,
          const Tensor& cos, const Tensor& sin, int64_t pos_offset, Tensor* out, float sign) {
  CheckActivation(in, 4, "[batch, seq, heads, head_dim]", op, in_name);
  const int64_t batch = in.dim(0), seq = in.dim(1), heads = in.dim(2), head_dim = in.dim(3);
  MOE_CHECK(head_dim % 2 == 0) << op << ": head_dim must be even for the split-half rotation, "
                               << in_name << " is " << in.Describe();
  const int64_t half = head_dim / 2;
  MOE_CHECK(cos.defined() && cos.ndim() == 2)
      << op << ": cos must be [positions, " << half << "], got " << DescribeOrUndefined(cos);
  const int64_t positions = cos.dim(0);
  CheckTensor(cos, {positions, half}, DType::kF32, op, "cos");
  CheckTensor(sin, {positions, half}, DType::kF32, op, "sin");
  MOE_CHECK(pos_offset >= 0 && pos_offset + seq <= positions)
      << op << ": positions [" << pos_offset << ", " << pos_offset + seq
      << ") are outside the cos/sin tables of " << positions << " positions";
  MOE_CHECK(out != nullptr) << op << ": " << out_name << " must not be null";
  CheckTensor(*out, in.shape(), in.dtype(), op, out_name);
  const int64_t pairs = batch * seq * heads * half;
  if (pairs == 0) return;
  const int blocks = GridStrideBlocks(pairs);
  if (in.dtype() == DType::kF32) {
    RopeKernel<float><<<blocks, kBlockSize, 0, 0>>>(Ptr<float>(*out), Ptr<float>(in),
                                                    cos.data<float>(), sin.data<float>(), pairs,
                                                    seq, heads, half, pos_offset, sign);
  } else {
    RopeKernel<__nv_bfloat16><<<blocks, kBlockSize, 0, 0>>>(
        Ptr<__nv_bfloat16>(*out), Ptr<__nv_bfloat16>(in), cos.data<float>(), sin.data<float>(),
        pairs, seq, heads, half, pos_offset, sign);
  }
  CUDA_CHECK_LAUNCH("RopeKernel");
}

}  // namespace

void RopeForward(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t pos_offset,
                 Tensor* y) {
  Rope("cuda::RopeForward", "x", "y", x, cos, sin, pos_offset, y, 1.0f);
}

void RopeBackward(const Tensor& dy, const Tensor& cos, const Tensor& sin, int64_t pos_offset,
                  Tensor* dx) {
  Rope("cuda::RopeBackward", "dy", "dx", dy, cos, sin, pos_offset, dx, -1.0f);
}

}  // namespace moe::cuda
