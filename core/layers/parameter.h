// A trainable tensor and its gradient. Layers own their Parameters and hand
// out pointers through Parameters(), in a fixed order, to the optimizer.
#ifndef MOE_CORE_LAYERS_PARAMETER_H_
#define MOE_CORE_LAYERS_PARAMETER_H_

#include <string>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"

namespace moe {

struct Parameter {
  Parameter() = default;
  // Allocates value (uninitialised) and grad (zeros) of `shape`. Gradients are
  // kF32 for kBF16 values (fp32 accumulation), otherwise the value's dtype.
  Parameter(std::string name, const Shape& shape, DType dtype, Device device);

  std::string name;  // the Hugging Face name where one exists
  Tensor value;
  Tensor grad;  // same shape; accumulated (+=) by backward, zeroed by the optimizer step
  // Where `value` sits in the whole tensor `name`: the whole of it, unless a
  // tensor-parallel layer holds a slice (parallel/tensor_parallel/). Weights
  // are initialised as InitNormal(&value, slice, ...) so that a shard draws
  // exactly its slice, and checkpoints place shards by it.
  ShardSlice slice;
};

// Appends pointers to `params` to `out` (a layer's Parameters() helper).
void AppendParameters(std::vector<Parameter*>* out, std::initializer_list<Parameter*> params);

}  // namespace moe

#endif  // MOE_CORE_LAYERS_PARAMETER_H_
