// Column-parallel Linear (Megatron-Core's ColumnParallelLinear, without
// bias): the weight W [out, in] is split by rows (output features) over the
// TP group, rank r holding rows [r out/TP, (r+1) out/TP), so each rank
// computes its own slice of the output columns from the whole input.
//
//   without SP: x [..., in] (the same on every TP rank) -> y [..., out/TP]
//   with SP:    x [batch, seq/TP, in] (this rank's sequence shard), gathered
//               over TP first -> y [batch, seq, out/TP]
//
// Backward: dx = dy W_r summed over TP (all-reduce), or reduce-scattered
// back to the sequence shard under SP; the collective runs while the weight
// gradient's GEMM computes. Under SP only the shard of x is saved and
// backward gathers it again, overlapped with the input gradient's GEMM.
// Gradient rule: weight.grad += ; dx = .
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_COLUMN_PARALLEL_LINEAR_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_COLUMN_PARALLEL_LINEAR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "parallel/communicator.h"

namespace moe {

class ColumnParallelLinear {
 public:
  // What backward needs: the input as Forward got it (the sequence shard
  // under SP).
  struct Saved {
    Tensor x;
  };

  // The weight "<name>.weight" is this rank's rows of the whole
  // [out_features, in_features] tensor (weight().slice says which), left
  // uninitialised. `tp` (the GroupKind::kTp communicator) must outlive the
  // layer. out_features must be divisible by tp->size().
  ColumnParallelLinear(std::string name, int64_t in_features, int64_t out_features,
                       Communicator* tp, bool sequence_parallel, DType dtype = DType::kF32,
                       Device device = Device::kCpu);

  Tensor Forward(const Tensor& x, Saved* saved) const;
  // dy: like y -> dx like x.
  Tensor Backward(const Tensor& dy, const Saved& saved);
  // The same, returned with dx's collective still running: dx is valid after
  // (*pending)->Wait(). For a caller with more to compute before it needs dx.
  Tensor BackwardAsync(const Tensor& dy, const Saved& saved, HandlePtr* pending);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }  // whole, not per rank
  int64_t local_out_features() const { return weight_.value.dim(0); }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Communicator* tp_;
  bool sequence_parallel_;
  Parameter weight_;
};

// The whole [..., out] from every TP rank's [..., out/TP] (Megatron's
// gather_output), e.g. full logits for evaluation. Forward only.
Tensor GatherLastDim(const Tensor& local, Communicator* tp);

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_COLUMN_PARALLEL_LINEAR_H_
