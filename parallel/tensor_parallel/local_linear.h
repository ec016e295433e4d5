// The three GEMMs of a bias-free Linear (y = x W^T) on one rank's weight
// shard, with no communication and the two backward GEMMs apart, so that a
// tensor-parallel layer can issue the input gradient's collective between
// them and let it run while the weight gradient computes (Megatron's
// asynchronous TP gradient all-reduce).
//
//   x, dx: [rows, in]   w: [out, in]   y, dy: [rows, out]   dw: like w
//
// All 2-D and contiguous (callers flatten leading dimensions), one dtype,
// one device: CPU kF32 / kF64 through OpenBLAS, CUDA through cuBLAS.
// Gradient rule: dw += (parameter); dx = or += as `accumulate` says.
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_LOCAL_LINEAR_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_LOCAL_LINEAR_H_

#include <string_view>

#include "core/tensor.h"

namespace moe {

// y = x w^T (a new tensor). `who` names the layer in error messages.
Tensor LocalLinearForward(std::string_view who, const Tensor& x, const Tensor& w);
// dx = dy w, or dx += dy w when `accumulate`.
void LocalLinearInputGrad(std::string_view who, const Tensor& dy, const Tensor& w, bool accumulate,
                          Tensor* dx);
// dw += dy^T x.
void LocalLinearWeightGrad(std::string_view who, const Tensor& dy, const Tensor& x, Tensor* dw);

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_LOCAL_LINEAR_H_
