// How one rank's model is placed in the parallel layout: the communicators
// its layers need (the trainer takes them from the RankGrid, so no layer
// computes a rank) and choices that move data without changing the math.
#ifndef MOE_MODEL_MODEL_PARALLEL_H_
#define MOE_MODEL_MODEL_PARALLEL_H_

#include "moe/token_dispatcher.h"
#include "parallel/communicator.h"

namespace moe {

struct ModelParallel {
  // The expert-parallel group (RankGrid GroupKind::kEp); nullptr: this rank
  // holds every expert. With EP ranks, each MoE layer holds E / EP experts.
  Communicator* ep = nullptr;
  // The data-parallel group (RankGrid GroupKind::kDp), for the
  // global-batch aux loss; nullptr: one data-parallel rank.
  Communicator* dp = nullptr;
  // --moe_token_dispatcher_type.
  DispatcherType dispatcher = DispatcherType::kAllToAll;
};

}  // namespace moe

#endif  // MOE_MODEL_MODEL_PARALLEL_H_
