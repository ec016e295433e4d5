#include "core/layers/linear.h"

#include "core/ops/cpu/gemm.h"
#include "core/ops/cuda/kernels.h"

namespace moe {
namespace {

// x [rows, in] times W^T [in, out] -> y [rows, out].
template <typename T>
void ForwardCpu(const Tensor& x, const Tensor& w, int64_t rows, int64_t in, int64_t out,
                Tensor* y) {
  cpu::Gemm<T>(/*trans_a=*/false, /*trans_b=*/true, rows, out, in, T(1), x.data<T>(), in,
               w.data<T>(), in, T(0), y->data<T>(), out);
}

template <typename T>
void BackwardCpu(const Tensor& dy, const Tensor& x, const Tensor& w, int64_t rows, int64_t in,
                 int64_t out, Tensor* dx, Tensor* dw) {
  // dx [rows, in] = dy [rows, out] W [out, in].
  cpu::Gemm<T>(false, false, rows, in, out, T(1), dy.data<T>(), out, w.data<T>(), in, T(0),
               dx->data<T>(), in);
  // dW [out, in] += dy^T [out, rows] x [rows, in] (beta = 1 accumulates).
  cpu::Gemm<T>(true, false, out, in, rows, T(1), dy.data<T>(), out, x.data<T>(), in, T(1),
               dw->data<T>(), in);
}

}  // namespace

Linear::Linear(std::string name, int64_t in_features, int64_t out_features, DType dtype,
               Device device)
    : in_features_(in_features),
      out_features_(out_features),
      weight_(std::move(name) + ".weight", {out_features, in_features}, dtype, device) {
  MOE_CHECK(in_features > 0 && out_features > 0)
      << weight_.name << ": in_features and out_features must be positive, got " << in_features
      << " and " << out_features;
  MOE_CHECK(device == Device::kCuda || dtype == DType::kF32 || dtype == DType::kF64)
      << weight_.name << ": a CPU Linear is kF32 or kF64, got " << DTypeName(dtype);
}

Tensor Linear::Forward(const Tensor& x, Saved* saved) const {
  const Tensor& w = weight_.value;
  MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == in_features_)
      << weight_.name << ": input must be [..., " << in_features_ << "], got " << x.Describe();
  MOE_CHECK(x.dtype() == w.dtype() && x.device() == w.device())
      << weight_.name << ": input " << x.Describe() << " vs weight " << w.Describe();
  const int64_t rows = x.numel() / in_features_;
  Shape out_shape = x.shape();
  out_shape.back() = out_features_;
  Tensor y = Tensor::Empty(out_shape, x.dtype(), x.device());
  if (x.device() == Device::kCuda) {
    Tensor y2 = y.Reshape({rows, out_features_});  // shares y's storage
    cuda::Gemm(false, true, 1.0f, x.Reshape({rows, in_features_}), w, 0.0f, &y2);
  } else if (x.dtype() == DType::kF64) {
    ForwardCpu<double>(x, w, rows, in_features_, out_features_, &y);
  } else {
    ForwardCpu<float>(x, w, rows, in_features_, out_features_, &y);
  }
  saved->x = x;
  return y;
}

Tensor Linear::Backward(const Tensor& dy, const Saved& saved) {
  const Tensor& x = saved.x;
  MOE_CHECK(x.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  Shape out_shape = x.shape();
  out_shape.back() = out_features_;
  MOE_CHECK(dy.shape() == out_shape && dy.dtype() == x.dtype() && dy.device() == x.device())
      << weight_.name << ": dy must be " << DTypeName(x.dtype()) << ShapeToString(out_shape)
      << " on " << DeviceName(x.device()) << ", got " << dy.Describe();
  const int64_t rows = x.numel() / in_features_;
  Tensor dx = Tensor::Empty(x.shape(), x.dtype(), x.device());
  if (dy.device() == Device::kCuda) {
    const Tensor dy2 = dy.Reshape({rows, out_features_});
    Tensor dx2 = dx.Reshape({rows, in_features_});
    cuda::Gemm(false, false, 1.0f, dy2, weight_.value, 0.0f, &dx2);
    cuda::Gemm(true, false, 1.0f, dy2, x.Reshape({rows, in_features_}), 1.0f, &weight_.grad);
  } else if (dy.dtype() == DType::kF64) {
    BackwardCpu<double>(dy, x, weight_.value, rows, in_features_, out_features_, &dx,
                        &weight_.grad);
  } else {
    BackwardCpu<float>(dy, x, weight_.value, rows, in_features_, out_features_, &dx, &weight_.grad);
  }
  return dx;
}

}  // namespace moe
