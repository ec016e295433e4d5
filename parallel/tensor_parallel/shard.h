// Where a tensor-parallel rank's piece of a weight sits, and a handle that
// keeps a collective's temporary buffers alive until it completes.
//
// Every sharded weight is an even slice of the unsharded Hugging Face tensor
// along one dimension, and its Parameter carries the whole tensor's name and
// that slice (Parameter::slice). So InitNormal(&value, slice, ...) draws
// exactly the slice's values, whatever the TP size (DESIGN.md property 1).
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_SHARD_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_SHARD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "parallel/communicator.h"

namespace moe {

// The Parameter `name` holding `size` entries of dimension `dim` from
// `offset` on of a whole tensor of `global_shape` (value uninitialised, grad
// zero, slice set).
Parameter ShardedParameter(std::string name, const Shape& global_shape, int dim, int64_t offset,
                           int64_t size, DType dtype, Device device);

// How many copies of `p` the TP group holds: tp_size for a replicated
// parameter, 1 for a slice only this rank has, in between for attention's
// replicated key/value heads. A global gradient norm counts each TP rank's
// squared norm divided by this.
int64_t TpCopies(const Parameter& p, int tp_size);

// Wraps `inner` so that `buffers` live until it has completed: the
// Communicator interface does not promise to keep a temporary input alive.
HandlePtr KeepAlive(HandlePtr inner, std::vector<Tensor> buffers);

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_SHARD_H_
