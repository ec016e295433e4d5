// Sequence parallelism (Megatron-LM's --sequence_parallel). Outside the
// tensor-parallel regions, activations [batch, seq, ...] are split along the
// sequence over the TP group: rank r holds positions [r seq/TP, (r+1) seq/TP)
// of every sequence, [batch, seq/TP, ...]. Token-wise layers (norms,
// residual adds, the router) then work on 1/TP of the tokens, and each TP
// region is entered with an all-gather and left with a reduce-scatter
// instead of one all-reduce: the same bytes, 1/TP of the activation memory.
//
// Megatron's [seq, batch, hidden] layout makes the split its first dimension;
// ours is [batch, seq, hidden], so for batch > 1 the gathered blocks are
// interleaved by a copy (cheap next to the GEMMs that follow).
//
// Each mapping's backward is another mapping:
//   forward                      backward
//   GatherSequence (all-gather)  ReduceScatterSequence when the gradient that
//                                comes back is a partial sum over TP (a
//                                column-parallel input), SliceSequence when
//                                every rank already holds the whole gradient
//   ReduceScatterSequence        GatherSequence
//   SliceSequence (no traffic)   GatherSequence
//
// `who` names the layer in error messages. With one TP rank nothing moves:
// the functions return their input (shallow) or a completed handle.
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_SEQUENCE_PARALLEL_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_SEQUENCE_PARALLEL_H_

#include <string_view>

#include "parallel/communicator.h"

namespace moe {

// shard: [batch, seq/TP, ...] -> [batch, seq, ...], every rank's block in
// rank order.
Tensor GatherSequence(std::string_view who, const Tensor& shard, Communicator* tp);
// The same, issued: *full is allocated at once and valid after Wait().
HandlePtr GatherSequenceAsync(std::string_view who, const Tensor& shard, Communicator* tp,
                              Tensor* full);

// partial: [batch, seq, ...], a different addend on each rank ->
// [batch, seq/TP, ...]: this rank's block of the sum over TP.
Tensor ReduceScatterSequence(std::string_view who, const Tensor& partial, Communicator* tp);
// The same, issued: *shard is allocated at once and valid after Wait().
HandlePtr ReduceScatterSequenceAsync(std::string_view who, const Tensor& partial, Communicator* tp,
                                     Tensor* shard);

// The output step of a layer whose ranks each computed an addend of y
// (row-parallel linear, attention's o_proj, the input gradient of a
// column-parallel layer): under sequence parallelism this rank's sequence
// block of the sum (a reduce-scatter), otherwise the whole sum (all-reduced
// in place in `partial`). The returned tensor is valid after *pending->Wait().
Tensor ReduceOverTensorParallelAsync(std::string_view who, const Tensor& partial,
                                     bool sequence_parallel, Communicator* tp, HandlePtr* pending);

// full: [batch, seq, ...], the same on every rank -> this rank's block
// [batch, seq/TP, ...] (a copy). No communication.
Tensor SliceSequence(std::string_view who, const Tensor& full, Communicator* tp);

// The sequence length of a gathered [batch, seq, ...] tensor split over
// `tp_size` ranks, checked: fails naming `who` unless tp_size divides it.
int64_t SequenceShardLength(std::string_view who, const Tensor& full, int tp_size);

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_SEQUENCE_PARALLEL_H_
