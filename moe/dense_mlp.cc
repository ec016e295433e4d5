#include "moe/dense_mlp.h"

#include <utility>

#include "core/layers/residual.h"

namespace moe {

DenseMlp::DenseMlp(std::string name, int64_t hidden_size, int64_t intermediate_size, DType dtype,
                   Device device)
    : name_(std::move(name)),
      gate_proj_(name_ + ".gate_proj", hidden_size, intermediate_size, dtype, device),
      up_proj_(name_ + ".up_proj", hidden_size, intermediate_size, dtype, device),
      down_proj_(name_ + ".down_proj", intermediate_size, hidden_size, dtype, device) {}

Tensor DenseMlp::Forward(const Tensor& x, Saved* saved) const {
  const Tensor gate = gate_proj_.Forward(x, &saved->gate_proj);
  const Tensor up = up_proj_.Forward(x, &saved->up_proj);
  const Tensor act = act_.Forward(gate, up, &saved->act);
  return down_proj_.Forward(act, &saved->down_proj);
}

Tensor DenseMlp::Backward(const Tensor& dy, const Saved& saved) {
  const Tensor dact = down_proj_.Backward(dy, saved.down_proj);
  const Swiglu::Grads d = act_.Backward(dact, saved.act);
  // dx = dx_gate + dx_up: both branches read x.
  Tensor dx = gate_proj_.Backward(d.dgate, saved.gate_proj);
  ResidualAccumulate(name_.c_str(), &dx, up_proj_.Backward(d.dup, saved.up_proj));
  return dx;
}

std::vector<Parameter*> DenseMlp::Parameters() {
  return {&gate_proj_.weight(), &up_proj_.weight(), &down_proj_.weight()};
}

}  // namespace moe
