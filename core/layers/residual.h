// Residual-stream arithmetic, kept apart so that a block reads as a list of
// layer calls: the stream adds a sub-block's output in forward, and in
// backward the stream's gradient adds the gradient that came back through the
// sub-block. The transformer block's residuals use it, and so do the MoE
// layer's parallel branches (shared expert, Residual-MoE, the router's dx).
// CPU kF32 or kF64 (the layers' dtypes).
#ifndef MOE_CORE_LAYERS_RESIDUAL_H_
#define MOE_CORE_LAYERS_RESIDUAL_H_

#include "core/tensor.h"

namespace moe {

// a + b, elementwise, into a new tensor; a and b of one shape and dtype.
// `what` names the caller in the error message.
Tensor ResidualAdd(const char* what, const Tensor& a, const Tensor& b);
// *a += b, elementwise.
void ResidualAccumulate(const char* what, Tensor* a, const Tensor& b);

}  // namespace moe

#endif  // MOE_CORE_LAYERS_RESIDUAL_H_
