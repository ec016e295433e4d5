// Row-parallel Linear (Megatron-Core's RowParallelLinear with
// input_is_parallel, without bias): the weight W [out, in] is split by
// columns (input features) over the TP group, rank r holding columns
// [r in/TP, (r+1) in/TP); each rank multiplies its slice of the input and
// the partial outputs are summed over TP.
//
//   without SP: x [..., in/TP] -> y [..., out] (all-reduce)
//   with SP:    x [batch, seq, in/TP] -> y [batch, seq/TP, out]
//               (reduce-scatter to this rank's sequence shard)
//
// Backward needs no reduction: dy (gathered over TP first under SP) times
// W_r is exactly this rank's slice of dx.
// Gradient rule: weight.grad += ; dx = .
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_ROW_PARALLEL_LINEAR_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_ROW_PARALLEL_LINEAR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "parallel/communicator.h"

namespace moe {

class RowParallelLinear {
 public:
  // What backward needs: this rank's slice of the input.
  struct Saved {
    Tensor x;
  };

  // The weight "<name>.weight" is this rank's columns of the whole
  // [out_features, in_features] tensor (weight().slice says which), left
  // uninitialised. `tp` (the GroupKind::kTp communicator) must outlive the
  // layer. in_features must be divisible by tp->size().
  RowParallelLinear(std::string name, int64_t in_features, int64_t out_features, Communicator* tp,
                    bool sequence_parallel, DType dtype = DType::kF32,
                    Device device = Device::kCpu);

  Tensor Forward(const Tensor& x, Saved* saved) const;
  // The same, returned with the output's all-reduce (reduce-scatter) still
  // running: y is valid after (*pending)->Wait(). The ladder residual block
  // computes its next sub-block meanwhile.
  Tensor ForwardAsync(const Tensor& x, Saved* saved, HandlePtr* pending) const;
  // dy: like y -> dx like x.
  Tensor Backward(const Tensor& dy, const Saved& saved);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t in_features() const { return in_features_; }  // whole, not per rank
  int64_t out_features() const { return out_features_; }
  int64_t local_in_features() const { return weight_.value.dim(1); }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Communicator* tp_;
  bool sequence_parallel_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_ROW_PARALLEL_LINEAR_H_
