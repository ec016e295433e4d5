// Residual-stream arithmetic of the transformer block, kept apart so that the
// block reads as a list of layer calls: the stream adds a sub-block's output
// in forward, and in backward the stream's gradient adds the gradient that
// came back through the sub-block. CPU kF32 or kF64 (the layers' dtypes).
#ifndef MOE_MODEL_RESIDUAL_H_
#define MOE_MODEL_RESIDUAL_H_

#include "core/tensor.h"

namespace moe {

// a + b, elementwise, into a new tensor; a and b of one shape and dtype.
// `what` names the caller in the error message.
Tensor ResidualAdd(const char* what, const Tensor& a, const Tensor& b);
// *a += b, elementwise.
void ResidualAccumulate(const char* what, Tensor* a, const Tensor& b);

}  // namespace moe

#endif  // MOE_MODEL_RESIDUAL_H_
