// How one rank's model is placed in the parallel layout: the communicators
// its layers need (the trainer takes them from the RankGrid, so no layer
// computes a rank) and choices that move data without changing the math.
#ifndef MOE_MODEL_MODEL_PARALLEL_H_
#define MOE_MODEL_MODEL_PARALLEL_H_

#include "moe/token_dispatcher.h"
#include "parallel/communicator.h"

namespace moe {

struct ModelParallel {
  // The tensor-parallel group (RankGrid GroupKind::kTp); nullptr or one
  // rank: every layer is whole. With TP > 1 the embedding, attention and LM
  // head are split over it (parallel/tensor_parallel/), and
  // sequence_parallel must be set: an MoE model needs its tokens split
  // along the sequence outside the TP regions (Megatron-Core asserts the
  // same), so that each TP rank routes only its own tokens.
  Communicator* tp = nullptr;
  bool sequence_parallel = false;
  // The expert-parallel group (RankGrid GroupKind::kEp); nullptr: this rank
  // holds every expert. With EP ranks, each MoE layer holds E / EP experts.
  Communicator* ep = nullptr;
  // The expert-tensor-parallel group (RankGrid GroupKind::kEtp); nullptr or
  // one rank: whole experts. With ETP > 1 each expert's intermediate
  // dimension is split over it (moe/expert_tensor_exchange.h).
  Communicator* etp = nullptr;
  // The data-parallel group (RankGrid GroupKind::kDp), for the
  // global-batch aux loss; nullptr: one data-parallel rank.
  Communicator* dp = nullptr;
  // --moe_token_dispatcher_type.
  DispatcherType dispatcher = DispatcherType::kAllToAll;

  // Whether the tensor-parallel layers are in use.
  bool tensor_parallel() const { return tp != nullptr && tp->size() > 1; }
};

}  // namespace moe

#endif  // MOE_MODEL_MODEL_PARALLEL_H_
