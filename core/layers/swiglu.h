// SwiGLU activation of Mixtral's experts: out = silu(gate) * up, with
// gate = x w1^T and up = x w3^T computed by the caller. No parameters.
#ifndef MOE_CORE_LAYERS_SWIGLU_H_
#define MOE_CORE_LAYERS_SWIGLU_H_

#include "core/tensor.h"

namespace moe {

class Swiglu {
 public:
  // What backward needs: both inputs.
  struct Saved {
    Tensor gate;
    Tensor up;
  };
  struct Grads {
    Tensor dgate;
    Tensor dup;
  };

  // gate, up: the same shape, dtype and device -> out: that shape.
  Tensor Forward(const Tensor& gate, const Tensor& up, Saved* saved) const;
  // dout: like out -> dgate, dup (=).
  Grads Backward(const Tensor& dout, const Saved& saved) const;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_SWIGLU_H_
