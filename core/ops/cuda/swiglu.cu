// SwiGLU on the GPU, elementwise: out = silu(gate) * up, silu(g) = g / (1 + e^-g),
// the same arithmetic as cpu::SwigluForward/Backward in fp32.
//   gate, up, out, dgate, dup, dout: any shape, all the same shape and dtype T
// Gradient rule: dgate =, dup = (activations).
// When every pointer is 16-byte aligned each thread moves 16 bytes per tensor
// per access (4 fp32 or 8 bf16); the remainder, and unaligned views, go one
// element at a time.
#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>

#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace moe::cuda {
namespace {

constexpr int kVectorBytes = 16;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

__device__ __forceinline__ float Sigmoid(float g) {
  // e^-g = inf for g << 0 gives 0, so this saturates without a NaN.
  return 1.0f / (1.0f + expf(-g));
}

__device__ __forceinline__ float SwigluValue(float g, float u) { return g * Sigmoid(g) * u; }

// d/dg [silu(g) u] = u s (1 + g (1 - s)) and d/du = silu(g), s = sigmoid(g).
__device__ __forceinline__ void SwigluGrads(float dout, float g, float u, float* dgate,
                                            float* dup) {
  const float s = Sigmoid(g);
  *dgate = dout * u * (s * (1.0f + g * (1.0f - s)));
  *dup = dout * (g * s);
}

template <typename T, int kVec>
__global__ void SwigluForwardKernel(T* out, const T* gate, const T* up, int64_t n) {
  using P = Pack<T, kVec>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = n / kVec;
  for (int64_t p = start; p < packs; p += stride) {
    const P g = reinterpret_cast<const P*>(gate)[p];
    const P u = reinterpret_cast<const P*>(up)[p];
    P o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      o.v[j] = FromFloat<T>(SwigluValue(ToFloat(g.v[j]), ToFloat(u.v[j])));
    }
    reinterpret_cast<P*>(out)[p] = o;
  }
  for (int64_t i = packs * kVec + start; i < n; i += stride) {
    out[i] = FromFloat<T>(SwigluValue(ToFloat(gate[i]), ToFloat(up[i])));
  }
}

template <typename T, int kVec>
__global__ void SwigluBackwardKernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                     int64_t n) {
  using P = Pack<T, kVec>;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t packs = n / kVec;
  float dg, du;
  for (int64_t p = start; p < packs; p += stride) {
    const P d = reinterpret_cast<const P*>(dout)[p];
    const P g = reinterpret_cast<const P*>(gate)[p];
    const P u = reinterpret_cast<const P*>(up)[p];
    P pg, pu;
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      SwigluGrads(ToFloat(d.v[j]), ToFloat(g.v[j]), ToFloat(u.v[j]), &dg, &du);
      pg.v[j] = FromFloat<T>(dg);
      pu.v[j] = FromFloat<T>(du);
    }
    reinterpret_cast<P*>(dgate)[p] = pg;
    reinterpret_cast<P*>(dup)[p] = pu;
  }
  for (int64_t i = packs * kVec + start; i < n; i += stride) {
    SwigluGrads(ToFloat(dout[i]), ToFloat(gate[i]), ToFloat(up[i]), &dg, &du);
    dgate[i] = FromFloat<T>(dg);
    dup[i] = FromFloat<T>(du);
  }
}

bool AllAligned(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (reinterpret_cast<uintptr_t>(t->raw_data()) % kVectorBytes != 0) return false;
  }
  return true;
}

template <typename T>
void LaunchForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const int64_t n = gate.numel();
  if (AllAligned({&gate, &up, out})) {
    SwigluForwardKernel<T, kVec><<<GridStrideBlocks(n / kVec), kBlockSize, 0, 0>>>(
        Ptr<T>(*out), Ptr<T>(gate), Ptr<T>(up), n);
  } else {
    SwigluForwardKernel<T, 1>
        <<<GridStrideBlocks(n), kBlockSize, 0, 0>>>(Ptr<T>(*out), Ptr<T>(gate), Ptr<T>(up), n);
  }
  CUDA_CHECK_LAUNCH("SwigluForwardKernel");
}

template <typename T>
void LaunchBackward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor* dgate,
                    Tensor* dup) {
  constexpr int kVec = kVectorBytes / sizeof(T);
  const int64_t n = gate.numel();
  if (AllAligned({&dout, &gate, &up, dgate, dup})) {
    SwigluBackwardKernel<T, kVec><<<GridStrideBlocks(n / kVec), kBlockSize, 0, 0>>>(
        Ptr<T>(*dgate), Ptr<T>(*dup), Ptr<T>(dout), Ptr<T>(gate), Ptr<T>(up), n);
  } else {
    SwigluBackwardKernel<T, 1><<<GridStrideBlocks(n), kBlockSize, 0, 0>>>(
        Ptr<T>(*dgate), Ptr<T>(*dup), Ptr<T>(dout), Ptr<T>(gate), Ptr<T>(up), n);
  }
  CUDA_CHECK_LAUNCH("SwigluBackwardKernel");
}

// gate may have any shape; `t` must be a CUDA tensor of gate's shape and dtype.
void CheckLike(const Tensor& t, const Tensor& gate, const char* op, const char* name) {
  CheckTensor(t, gate.shape(), gate.dtype(), op, name);
}

void CheckGate(const Tensor& gate, const char* op) {
  MOE_CHECK(gate.defined() && gate.device() == Device::kCuda &&
            (gate.dtype() == DType::kF32 || gate.dtype() == DType::kBF16))
      << op << ": gate must be an f32 or bf16 CUDA tensor, got " << DescribeOrUndefined(gate);
}

}  // namespace

void SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out) {
  constexpr const char* kOp = "cuda::SwigluForward";
  CheckGate(gate, kOp);
  CheckLike(up, gate, kOp, "up");
  MOE_CHECK(out != nullptr) << kOp << ": out must not be null";
  CheckLike(*out, gate, kOp, "out");
  if (gate.numel() == 0) return;
  if (gate.dtype() == DType::kF32) {
    LaunchForward<float>(gate, up, out);
  } else {
    LaunchForward<__nv_bfloat16>(gate, up, out);
  }
}

void SwigluBackward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor* dgate,
                    Tensor* dup) {
  constexpr const char* kOp = "cuda::SwigluBackward";
  CheckGate(gate, kOp);
  CheckLike(up, gate, kOp, "up");
  CheckLike(dout, gate, kOp, "dout");
  MOE_CHECK(dgate != nullptr && dup != nullptr) << kOp << ": dgate and dup must not be null";
  CheckLike(*dgate, gate, kOp, "dgate");
  CheckLike(*dup, gate, kOp, "dup");
  if (gate.numel() == 0) return;
  if (gate.dtype() == DType::kF32) {
    LaunchBackward<float>(dout, gate, up, dgate, dup);
  } else {
    LaunchBackward<__nv_bfloat16>(dout, gate, up, dgate, dup);
  }
}

}  // namespace moe::cuda
