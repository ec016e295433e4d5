// A dense SwiGLU MLP, the shape of one expert applied to every token:
//
//   y = down_proj(silu(gate_proj(x)) * up_proj(x))
//
// Used where a layer computes densely next to (or instead of) the routed
// experts: the shared expert (Megatron-Core's --moe_shared_expert_intermediate_size,
// Qwen2-MoE's shared_expert), Residual-MoE's MLP branch (DeepSpeed-MoE) and
// the dense layers between MoE layers (--moe_layer_freq). Parameters
// "<name>.{gate_proj,up_proj,down_proj}.weight", as Hugging Face names a
// dense Llama/Qwen MLP.
#ifndef MOE_MOE_DENSE_MLP_H_
#define MOE_MOE_DENSE_MLP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/linear.h"
#include "core/layers/swiglu.h"

namespace moe {

class DenseMlp {
 public:
  struct Saved {
    Linear::Saved gate_proj, up_proj, down_proj;
    Swiglu::Saved act;
  };

  // Weights left uninitialised (the model fills them). CPU kF32 or kF64.
  DenseMlp(std::string name, int64_t hidden_size, int64_t intermediate_size,
           DType dtype = DType::kF32, Device device = Device::kCpu);

  // x: [..., H] -> y: [..., H].
  Tensor Forward(const Tensor& x, Saved* saved) const;
  // dy like y -> dx (=); weight grads += .
  Tensor Backward(const Tensor& dy, const Saved& saved);

  // gate_proj, up_proj, down_proj.
  std::vector<Parameter*> Parameters();
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  Linear gate_proj_, up_proj_, down_proj_;
  Swiglu act_;
};

}  // namespace moe

#endif  // MOE_MOE_DENSE_MLP_H_
