#include "core/layers/rope.h"

#include "core/ops/cpu/rope.h"
#include "core/ops/cuda/kernels.h"

namespace moe {
namespace {

template <typename T>
void Tables(int64_t positions, int64_t head_dim, double theta, Tensor* cos, Tensor* sin) {
  cpu::RopeTables(cos->data<T>(), sin->data<T>(), positions, head_dim, theta);
}

// forward: y = rotate(x); otherwise the inverse rotation.
template <typename T>
void RotateCpu(bool forward, const Tensor& x, const Tensor& cos, const Tensor& sin,
               int64_t pos_offset, Tensor* y) {
  const auto rotate = forward ? cpu::RopeForward<T> : cpu::RopeBackward<T>;
  rotate(y->data<T>(), x.data<T>(), cos.data<T>(), sin.data<T>(), x.dim(0), x.dim(1), x.dim(2),
         x.dim(3), pos_offset);
}

}  // namespace

Rope::Rope(int64_t head_dim, int64_t max_positions, double theta, DType dtype, Device device)
    : head_dim_(head_dim), max_positions_(max_positions), dtype_(dtype), device_(device) {
  MOE_CHECK(head_dim > 0 && head_dim % 2 == 0)
      << "Rope: head_dim must be positive and even, got " << head_dim;
  MOE_CHECK(max_positions > 0) << "Rope: max_positions must be positive, got " << max_positions;
  MOE_CHECK(theta > 0) << "Rope: theta must be positive, got " << theta;
  MOE_CHECK(device == Device::kCuda || dtype == DType::kF32 || dtype == DType::kF64)
      << "Rope: a CPU Rope is kF32 or kF64, got " << DTypeName(dtype);
  const DType table_dtype = device == Device::kCuda ? DType::kF32 : dtype;
  const Shape shape = {max_positions, head_dim / 2};
  cos_ = Tensor::Empty(shape, table_dtype);
  sin_ = Tensor::Empty(shape, table_dtype);
  if (table_dtype == DType::kF64) {
    Tables<double>(max_positions, head_dim, theta, &cos_, &sin_);
  } else {
    Tables<float>(max_positions, head_dim, theta, &cos_, &sin_);
  }
  if (device == Device::kCuda) {
    cos_ = cos_.To(Device::kCuda);
    sin_ = sin_.To(Device::kCuda);
  }
}

void Rope::CheckInput(const Tensor& x, const char* what, int64_t pos_offset) const {
  MOE_CHECK(x.ndim() == 4 && x.dim(3) == head_dim_)
      << "Rope: " << what << " must be [batch, seq, heads, " << head_dim_ << "], got "
      << x.Describe();
  MOE_CHECK(x.dtype() == dtype_ && x.device() == device_)
      << "Rope: " << what << " " << x.Describe() << " does not match the layer's "
      << DTypeName(dtype_) << " on " << DeviceName(device_);
  MOE_CHECK(pos_offset >= 0 && pos_offset + x.dim(1) <= max_positions_)
      << "Rope: positions [" << pos_offset << ", " << pos_offset + x.dim(1)
      << ") do not fit the table of max_positions " << max_positions_
      << " (raise max_position_embeddings or shorten the sequence)";
}

Tensor Rope::Forward(const Tensor& x, int64_t pos_offset) const {
  CheckInput(x, "x", pos_offset);
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  if (x.device() == Device::kCuda) {
    cuda::RopeForward(x, cos_, sin_, pos_offset, &y);
  } else if (x.dtype() == DType::kF64) {
    RotateCpu<double>(true, x, cos_, sin_, pos_offset, &y);
  } else {
    RotateCpu<float>(true, x, cos_, sin_, pos_offset, &y);
  }
  return y;
}

Tensor Rope::Backward(const Tensor& dy, int64_t pos_offset) const {
  CheckInput(dy, "dy", pos_offset);
  Tensor dx = Tensor::Empty(dy.shape(), dy.dtype(), dy.device());
  if (dy.device() == Device::kCuda) {
    cuda::RopeBackward(dy, cos_, sin_, pos_offset, &dx);
  } else if (dy.dtype() == DType::kF64) {
    RotateCpu<double>(false, dy, cos_, sin_, pos_offset, &dx);
  } else {
    RotateCpu<float>(false, dy, cos_, sin_, pos_offset, &dx);
  }
  return dx;
}

}  // namespace moe
