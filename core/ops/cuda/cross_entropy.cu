// Cross-entropy on the GPU, one block per row, the same quantities as
// cpu::CrossEntropyForward/Backward computed in fp32:
//   logits, dlogits: [rows, vocab] T   labels: [rows] i32 (< 0 ignored)
//   losses, lse: [rows] f32, losses = lse - logit[label] (0 for ignored rows)
// The log-sum-exp is one pass over the row with a running (max, sum of
// exp(x - max)) per thread, merged across the block, so the logits are read
// once and exp never overflows.
// Backward: dlogits = scale * (softmax - onehot(label)); ignored rows get 0.
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>

#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace moe::cuda {
namespace {

// A softmax denominator in pieces: sum = sum_j exp(x_j - max).
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum Merge(MaxSum a, MaxSum b) {
  // An empty side (max = -inf, which is also what a -inf logit contributes)
  // must not produce exp(-inf - -inf) = NaN.
  if (b.max == -INFINITY) return a;
  if (a.max == -INFINITY) return b;
  if (b.max > a.max) return {b.max, a.sum * expf(a.max - b.max) + b.sum};
  return {a.max, a.sum + b.sum * expf(b.max - a.max)};
}

__device__ __forceinline__ MaxSum WarpMerge(MaxSum v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_xor_sync(0xffffffffu, v.max, offset),
                       __shfl_xor_sync(0xffffffffu, v.sum, offset)};
    v = Merge(v, other);
  }
  return v;
}

// Merge over the block, returned to every thread (blockDim.x a multiple of 32).
__device__ __forceinline__ MaxSum BlockMerge(MaxSum v) {
  __shared__ float warp_max[kWarpSize];
  __shared__ float warp_sum[kWarpSize];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  v = WarpMerge(v);
  if (lane == 0) {
    warp_max[warp] = v.max;
    warp_sum[warp] = v.sum;
  }
  __syncthreads();
  const MaxSum mine =
      lane < warps ? MaxSum{warp_max[lane], warp_sum[lane]} : MaxSum{-INFINITY, 0.0f};
  return WarpMerge(mine);
}

template <typename T>
__global__ void CrossEntropyForwardKernel(float* losses, float* lse, const T* logits,
                                          const int32_t* labels, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const T* lr = logits + row * vocab;
  MaxSum state{-INFINITY, 0.0f};
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    state = Merge(state, MaxSum{ToFloat(lr[i]), 1.0f});
  }
  state = BlockMerge(state);
  if (threadIdx.x != 0) return;
  const float row_lse = state.max + logf(state.sum);
  lse[row] = row_lse;
  const int32_t label = labels[row];
  if (label >= vocab) {
    // A corrupt label must not read past the row; the trap fails the next
    // CUDA call, and this line says why.
    printf("cuda::CrossEntropyForward: label %d of row %lld is outside the vocab of %lld\n", label,
           static_cast<long long>(row), static_cast<long long>(vocab));
    __trap();
  }
  losses[row] = label < 0 ? 0.0f : row_lse - ToFloat(lr[label]);
}

template <typename T>
__global__ void CrossEntropyBackwardKernel(T* dlogits, const T* logits, const int32_t* labels,
                                           const float* lse, float scale, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const T* lr = logits + row * vocab;
  T* dr = dlogits + row * vocab;
  const int32_t label = labels[row];
  if (label < 0) {
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) dr[i] = FromFloat<T>(0.0f);
    return;
  }
  const float row_lse = lse[row];
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float softmax = expf(ToFloat(lr[i]) - row_lse);
    dr[i] = FromFloat<T>(scale * (softmax - (i == label ? 1.0f : 0.0f)));
  }
}

// Checks logits and labels; returns nothing, the shapes are read from logits.
void CheckLogitsAndLabels(const Tensor& logits, const Tensor& labels, const char* op) {
  CheckActivation(logits, 2, "[rows, vocab]", op, "logits");
  CheckTensor(labels, {logits.dim(0)}, DType::kI32, op, "labels");
  CheckFitsInt(logits.dim(0), op, "rows");
  CheckFitsInt(logits.dim(1), op, "vocab");
}

}  // namespace

void CrossEntropyForward(const Tensor& logits, const Tensor& labels, Tensor* losses, Tensor* lse) {
  constexpr const char* kOp = "cuda::CrossEntropyForward";
  CheckLogitsAndLabels(logits, labels, kOp);
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  MOE_CHECK(losses != nullptr && lse != nullptr) << kOp << ": losses and lse must not be null";
  CheckTensor(*losses, {rows}, DType::kF32, kOp, "losses");
  CheckTensor(*lse, {rows}, DType::kF32, kOp, "lse");
  if (rows == 0) return;
  MOE_CHECK(vocab > 0) << kOp << ": vocab must be positive, logits are " << logits.Describe();
  const unsigned blocks = static_cast<unsigned>(rows);
  if (logits.dtype() == DType::kF32) {
    CrossEntropyForwardKernel<float>
        <<<blocks, kBlockSize, 0, 0>>>(losses->data<float>(), lse->data<float>(),
                                       Ptr<float>(logits), labels.data<int32_t>(), vocab);
  } else {
    CrossEntropyForwardKernel<__nv_bfloat16>
        <<<blocks, kBlockSize, 0, 0>>>(losses->data<float>(), lse->data<float>(),
                                       Ptr<__nv_bfloat16>(logits), labels.data<int32_t>(), vocab);
  }
  CUDA_CHECK_LAUNCH("CrossEntropyForwardKernel");
}

void CrossEntropyBackward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                          float scale, Tensor* dlogits) {
  constexpr const char* kOp = "cuda::CrossEntropyBackward";
  CheckLogitsAndLabels(logits, labels, kOp);
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  CheckTensor(lse, {rows}, DType::kF32, kOp, "lse");
  MOE_CHECK(dlogits != nullptr) << kOp << ": dlogits must not be null";
  CheckTensor(*dlogits, logits.shape(), logits.dtype(), kOp, "dlogits");
  if (rows == 0 || vocab == 0) return;
  const unsigned blocks = static_cast<unsigned>(rows);
  if (logits.dtype() == DType::kF32) {
    CrossEntropyBackwardKernel<float>
        <<<blocks, kBlockSize, 0, 0>>>(Ptr<float>(*dlogits), Ptr<float>(logits),
                                       labels.data<int32_t>(), lse.data<float>(), scale, vocab);
  } else {
    CrossEntropyBackwardKernel<__nv_bfloat16>
        <<<blocks, kBlockSize, 0, 0>>>(Ptr<__nv_bfloat16>(*dlogits), Ptr<__nv_bfloat16>(logits),
                                       labels.data<int32_t>(), lse.data<float>(), scale, vocab);
  }
  CUDA_CHECK_LAUNCH("CrossEntropyBackwardKernel");
}

}  // namespace moe::cuda
