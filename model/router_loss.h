// The router losses of one micro-batch over all MoE layers, by
// --moe_router_load_balancing_type (moe/router_losses.h has the formulas):
//
//   hf_aux_loss      Hugging Face's load_balancing_loss_func: statistics of
//                    every layer pooled, one value (the default: parity with
//                    MixtralForCausalLM's output_router_logits loss)
//   aux_loss         Megatron-Core's switch loss, per layer, summed
//   seq_aux_loss     Megatron-Core's sequence-level loss, per layer, summed
//   global_aux_loss  Megatron-Core's global-batch loss: counts all-reduced
//                    over the data-parallel ranks and averaged over the
//                    micro-batches so far in the global batch, per layer
//   none
//
// plus the z-loss (per layer, summed) and top-p's entropy loss (per layer,
// summed). Values are returned without their coefficients (the trainer logs
// them so); gradients carry coefficient * scale.
//
// global_aux_loss depends on how the global batch is split over ranks and
// micro-batches (as in Megatron-Core), so it is the one balancing loss that
// layout invariance (DESIGN.md property 1) does not cover.
#ifndef MOE_MODEL_ROUTER_LOSS_H_
#define MOE_MODEL_ROUTER_LOSS_H_

#include <vector>

#include "model/config.h"
#include "moe/router_losses.h"
#include "parallel/communicator.h"

namespace moe {

struct RouterLossScales {
  double aux = 0;  // LossScales::aux
  double z = 0;    // LossScales::z
};

struct RouterLossResult {
  double aux = 0;                      // balancing loss, not times its coefficient
  double z = 0;                        // sum over layers, not times its coefficient
  double entropy = 0;                  // sum over layers, not times its coefficient
  std::vector<RouterLossGrads> grads;  // per layer, for TransformerBlock::Backward
};

class RouterLoss {
 public:
  // `dp` (may be null: one data-parallel rank) is all-reduced over by
  // global_aux_loss; it must outlive this object. `config` validated.
  RouterLoss(const ModelConfig& config, Communicator* dp);

  // Before the first micro-batch of a global batch (global_aux_loss's
  // running mean restarts).
  void StartGlobalBatch();

  // Per-layer statistics of one micro-batch -> values and gradients. With
  // training = false (evaluation), global_aux_loss uses the local counts
  // and touches neither the running mean nor the network.
  RouterLossResult Compute(const std::vector<RouterStats>& stats,
                           const std::vector<SequenceStats>& seq_stats,
                           const RouterLossScales& scales, bool training);

 private:
  const ModelConfig& config_;
  Communicator* dp_;
  int64_t micro_batches_ = 0;
  std::vector<std::vector<double>> global_counts_;  // per layer [E], summed so far
  double global_rows_ = 0;                          // per micro-batch, over DP
};

}  // namespace moe

#endif  // MOE_MODEL_ROUTER_LOSS_H_
