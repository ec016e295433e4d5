// RMSNorm on the GPU: y = x * inv_rms * weight, inv_rms = 1 / sqrt(mean(x^2) + eps),
// the same arithmetic as cpu::RmsNormForward/Backward with fp32 in place of T.
//   x, y, dx, dy: [rows, dim] T   weight: [dim] T   inv_rms: [rows] f32   dweight: [dim] f32
// One block per row; the row's sums are block reductions in fp32.
// Gradient rule: dweight += (parameter), dx = (activation).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "core/ops/cuda/cuda_check.h"
#include "core/ops/cuda/kernels.h"
#include "core/ops/cuda/launch.cuh"

namespace moe::cuda {
namespace {

// Blocks of the backward kernel, each summing dweight over its share of the
// rows into its own fp32 row of a scratch buffer. A fixed count (not one
// derived from the GPU) keeps the summation order, and so dweight's bits,
// the same on every device.
constexpr int64_t kBackwardBlocks = 256;

template <typename T>
__global__ void RmsNormForwardKernel(T* y, float* inv_rms, const T* x, const T* weight, int64_t dim,
                                     double eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * dim;
  T* yr = y + row * dim;
  float sum_squares = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = ToFloat(xr[i]);
    sum_squares += v * v;
  }
  sum_squares = BlockSum(sum_squares);
  // One double-precision rsqrt per row costs nothing and matches the CPU,
  // which adds eps in double.
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(sum_squares) / dim + eps));
  if (threadIdx.x == 0) inv_rms[row] = scale;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    yr[i] = FromFloat<T>(ToFloat(xr[i]) * scale * ToFloat(weight[i]));
  }
}

// dx = s * dy * w - x * s^3 / dim * sum(dy * w * x), with s = inv_rms, and
// partial[block][i] = sum over this block's rows of dy * x * s. Thread t
// owns columns t, t + blockDim.x, ... of its block's partial row, so the
// read-modify-write needs neither atomics nor barriers.
template <typename T>
__global__ void RmsNormBackwardKernel(T* dx, float* partial, const T* dy, const T* x,
                                      const T* weight, const float* inv_rms, int64_t rows,
                                      int64_t dim) {
  float* my_partial = partial + static_cast<int64_t>(blockIdx.x) * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) my_partial[i] = 0.0f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * dim;
    const T* dyr = dy + row * dim;
    T* dxr = dx + row * dim;
    const float s = inv_rms[row];
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      dot += ToFloat(dyr[i]) * ToFloat(weight[i]) * ToFloat(xr[i]);
    }
    dot = BlockSum(dot);
    const float coefficient = dot * s * s * s / static_cast<float>(dim);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float xi = ToFloat(xr[i]);
      const float dyi = ToFloat(dyr[i]);
      dxr[i] = FromFloat<T>(s * dyi * ToFloat(weight[i]) - xi * coefficient);
      my_partial[i] += dyi * xi * s;
    }
  }
}

// dweight[i] += sum over blocks b (in order) of partial[b][i].
__global__ void SumPartialsKernel(float* dweight, const float* partial, int64_t blocks,
                                  int64_t dim) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= dim) return;
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) sum += partial[b * dim + i];
  dweight[i] += sum;
}

template <typename T>
void LaunchForward(const Tensor& x, const Tensor& weight, double eps, Tensor* y, Tensor* inv_rms) {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  RmsNormForwardKernel<T><<<static_cast<unsigned>(rows), kBlockSize, 0, 0>>>(
      Ptr<T>(*y), inv_rms->data<float>(), Ptr<T>(x), Ptr<T>(weight), dim, eps);
  CUDA_CHECK_LAUNCH("RmsNormForwardKernel");
}

template <typename T>
void LaunchBackward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                    Tensor* dx, Tensor* dweight) {
  const int64_t rows = x.dim(0), dim = x.dim(1);
  const int64_t blocks = std::min(rows, kBackwardBlocks);
  const size_t partial_bytes = static_cast<size_t>(blocks * dim) * sizeof(float);
  // Stream-ordered scratch: freed once the kernels that use it have run,
  // without a device-wide synchronisation.
  void* partial = nullptr;
  CUDA_CHECK(cudaMallocAsync(&partial, partial_bytes, /*stream=*/0))
      << "allocating " << partial_bytes << " bytes of RMSNorm dweight scratch";
  RmsNormBackwardKernel<T><<<static_cast<unsigned>(blocks), kBlockSize, 0, 0>>>(
      Ptr<T>(*dx), static_cast<float*>(partial), Ptr<T>(dy), Ptr<T>(x), Ptr<T>(weight),
      inv_rms.data<float>(), rows, dim);
  CUDA_CHECK_LAUNCH("RmsNormBackwardKernel");
  const int64_t sum_blocks = (dim + kBlockSize - 1) / kBlockSize;
  SumPartialsKernel<<<static_cast<unsigned>(sum_blocks), kBlockSize, 0, 0>>>(
      dweight->data<float>(), static_cast<const float*>(partial), blocks, dim);
  CUDA_CHECK_LAUNCH("SumPartialsKernel");
  CUDA_CHECK(cudaFreeAsync(partial, /*stream=*/0));
}

}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& weight, double eps, Tensor* y, Tensor* inv_rms) {
  constexpr const char* kOp = "cuda::RmsNormForward";
  CheckActivation(x, 2, "[rows, dim]", kOp, "x");
  const int64_t rows = x.dim(0), dim = x.dim(1);
  CheckTensor(weight, {dim}, x.dtype(), kOp, "weight");
  MOE_CHECK(y != nullptr && inv_rms != nullptr) << kOp << ": y and inv_rms must not be null";
  CheckTensor(*y, {rows, dim}, x.dtype(), kOp, "y");
  CheckTensor(*inv_rms, {rows}, DType::kF32, kOp, "inv_rms");
  MOE_CHECK(eps > 0) << kOp << ": eps must be positive, got " << eps;
  CheckFitsInt(rows, kOp, "rows");
  if (rows == 0) return;
  MOE_CHECK(dim > 0) << kOp << ": dim must be positive, x is " << x.Describe();
  if (x.dtype() == DType::kF32) {
    LaunchForward<float>(x, weight, eps, y, inv_rms);
  } else {
    LaunchForward<__nv_bfloat16>(x, weight, eps, y, inv_rms);
  }
}

void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                     Tensor* dx, Tensor* dweight) {
  constexpr const char* kOp = "cuda::RmsNormBackward";
  CheckActivation(x, 2, "[rows, dim]", kOp, "x");
  const int64_t rows = x.dim(0), dim = x.dim(1);
  CheckTensor(dy, {rows, dim}, x.dtype(), kOp, "dy");
  CheckTensor(weight, {dim}, x.dtype(), kOp, "weight");
  CheckTensor(inv_rms, {rows}, DType::kF32, kOp, "inv_rms");
  MOE_CHECK(dx != nullptr && dweight != nullptr) << kOp << ": dx and dweight must not be null";
  CheckTensor(*dx, {rows, dim}, x.dtype(), kOp, "dx");
  CheckTensor(*dweight, {dim}, DType::kF32, kOp, "dweight");
  if (rows == 0 || dim == 0) return;
  if (x.dtype() == DType::kF32) {
    LaunchBackward<float>(dy, x, weight, inv_rms, dx, dweight);
  } else {
    LaunchBackward<__nv_bfloat16>(dy, x, weight, inv_rms, dx, dweight);
  }
}

}  // namespace moe::cuda
