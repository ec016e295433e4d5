#include "core/layers/rmsnorm.h"

#include "core/ops/cpu/rmsnorm.h"
#include "core/ops/cuda/kernels.h"

namespace moe {
namespace {

template <typename T>
void ForwardCpu(const Tensor& x, const Tensor& w, double eps, Tensor* y, Tensor* inv_rms) {
  cpu::RmsNormForward(y->data<T>(), inv_rms->data<T>(), x.data<T>(), w.data<T>(), inv_rms->numel(),
                      x.dim(-1), eps);
}

template <typename T>
void BackwardCpu(const Tensor& dy, const Tensor& w, const RmsNorm::Saved& saved, Tensor* dx,
                 Tensor* dw) {
  cpu::RmsNormBackward(dx->data<T>(), dw->data<T>(), dy.data<T>(), saved.x.data<T>(), w.data<T>(),
                       saved.inv_rms.data<T>(), saved.inv_rms.numel(), saved.x.dim(-1));
}

}  // namespace

RmsNorm::RmsNorm(std::string name, int64_t dim, double eps, DType dtype, Device device)
    : dim_(dim), eps_(eps), weight_(std::move(name) + ".weight", {dim}, dtype, device) {
  MOE_CHECK(dim > 0) << "RmsNorm: dim must be positive, got " << dim;
  MOE_CHECK(eps > 0) << "RmsNorm: eps must be positive, got " << eps;
  Tensor ones = Tensor::Empty({dim}, dtype);
  for (int64_t i = 0; i < dim; ++i) ones.SetFromDouble(i, 1.0);
  weight_.value.CopyFrom(ones);
}

Tensor RmsNorm::Forward(const Tensor& x, Saved* saved) const {
  const Tensor& w = weight_.value;
  MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == dim_)
      << weight_.name << ": input must be [..., " << dim_ << "], got " << x.Describe();
  MOE_CHECK(x.dtype() == w.dtype() && x.device() == w.device())
      << weight_.name << ": input " << x.Describe() << " vs weight " << w.Describe();
  const int64_t rows = x.numel() / dim_;
  Tensor y = Tensor::Empty(x.shape(), x.dtype(), x.device());
  const DType stat_dtype = x.device() == Device::kCuda ? DType::kF32 : x.dtype();
  Tensor inv_rms = Tensor::Empty({rows}, stat_dtype, x.device());
  if (x.device() == Device::kCuda) {
    Tensor y2 = y.Reshape({rows, dim_});  // shares y's storage
    cuda::RmsNormForward(x.Reshape({rows, dim_}), w, eps_, &y2, &inv_rms);
  } else if (x.dtype() == DType::kF64) {
    ForwardCpu<double>(x, w, eps_, &y, &inv_rms);
  } else {
    ForwardCpu<float>(x, w, eps_, &y, &inv_rms);
  }
  saved->x = x;
  saved->inv_rms = inv_rms;
  return y;
}

Tensor RmsNorm::Backward(const Tensor& dy, const Saved& saved) {
  MOE_CHECK(dy.shape() == saved.x.shape() && dy.dtype() == saved.x.dtype())
      << weight_.name << ": dy " << dy.Describe() << " does not match input " << saved.x.Describe();
  Tensor dx = Tensor::Empty(dy.shape(), dy.dtype(), dy.device());
  if (dy.device() == Device::kCuda) {
    const int64_t rows = dy.numel() / dim_;
    Tensor dx2 = dx.Reshape({rows, dim_});
    cuda::RmsNormBackward(dy.Reshape({rows, dim_}), saved.x.Reshape({rows, dim_}), weight_.value,
                          saved.inv_rms, &dx2, &weight_.grad);
  } else if (dy.dtype() == DType::kF64) {
    BackwardCpu<double>(dy, weight_.value, saved, &dx, &weight_.grad);
  } else {
    BackwardCpu<float>(dy, weight_.value, saved, &dx, &weight_.grad);
  }
  return dx;
}

}  // namespace moe
