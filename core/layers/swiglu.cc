#include "core/layers/swiglu.h"

#include "core/ops/cpu/swiglu.h"
#include "core/ops/cuda/kernels.h"

namespace moe {

Tensor Swiglu::Forward(const Tensor& gate, const Tensor& up, Saved* saved) const {
  MOE_CHECK(gate.shape() == up.shape() && gate.dtype() == up.dtype() &&
            gate.device() == up.device())
      << "Swiglu: gate " << gate.Describe() << " and up " << up.Describe()
      << " must have the same shape, dtype and device";
  MOE_CHECK(gate.device() == Device::kCuda || gate.dtype() == DType::kF32 ||
            gate.dtype() == DType::kF64)
      << "Swiglu: CPU inputs must be f32 or f64, got " << gate.Describe();
  Tensor out = Tensor::Empty(gate.shape(), gate.dtype(), gate.device());
  if (gate.device() == Device::kCuda) {
    cuda::SwigluForward(gate, up, &out);
  } else if (gate.dtype() == DType::kF64) {
    cpu::SwigluForward(out.data<double>(), gate.data<double>(), up.data<double>(), gate.numel());
  } else {
    cpu::SwigluForward(out.data<float>(), gate.data<float>(), up.data<float>(), gate.numel());
  }
  saved->gate = gate;
  saved->up = up;
  return out;
}

Swiglu::Grads Swiglu::Backward(const Tensor& dout, const Saved& saved) const {
  const Tensor& gate = saved.gate;
  const Tensor& up = saved.up;
  MOE_CHECK(gate.defined() && up.defined()) << "Swiglu: Backward needs the Saved of a Forward call";
  MOE_CHECK(dout.shape() == gate.shape() && dout.dtype() == gate.dtype() &&
            dout.device() == gate.device())
      << "Swiglu: dout " << dout.Describe() << " does not match gate " << gate.Describe();
  Grads grads;
  grads.dgate = Tensor::Empty(gate.shape(), gate.dtype(), gate.device());
  grads.dup = Tensor::Empty(gate.shape(), gate.dtype(), gate.device());
  if (dout.device() == Device::kCuda) {
    cuda::SwigluBackward(dout, gate, up, &grads.dgate, &grads.dup);
  } else if (dout.dtype() == DType::kF64) {
    cpu::SwigluBackward(grads.dgate.data<double>(), grads.dup.data<double>(), dout.data<double>(),
                        gate.data<double>(), up.data<double>(), gate.numel());
  } else {
    cpu::SwigluBackward(grads.dgate.data<float>(), grads.dup.data<float>(), dout.data<float>(),
                        gate.data<float>(), up.data<float>(), gate.numel());
  }
  return grads;
}

}  // namespace moe
