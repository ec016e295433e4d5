// Router statistics and the losses taken from them: load balancing (Hugging
// Face's pooled aux loss; Megatron-Core's per-micro-batch, sequence-level and
// global-batch aux losses), the z-loss and the top-p entropy loss.
//
// Every statistic is an exact sum in double, so pooling over layers,
// micro-batches or ranks is a plain Add and does not depend on the layout.
// Each loss returns its value and the gradient that Router::Backward takes
// (through RouterLossGrads), already times coefficient * loss_scale.
//
// Notation: N router rows (tokens); E experts; q[t, e] the balance scores
// (softmax over all E; for sigmoid, sigmoid(logit) / sum_e sigmoid(logit):
// Megatron's compute_routing_scores_for_aux_loss); C_e = choice_counts[e];
// K = sum_e C_e / N (top_k for top-k routing, the mean set size for top-p);
// Psum_e = sum_t q[t, e]. The counts come from an argmax, so no gradient
// flows through them: each loss is linear in q with a constant per expert.
//
//   HF aux (load_balancing_loss_func, pooled over all layers' rows):
//       aux = E * sum_e (C_e / N) (Psum_e / N)
//   Megatron aux_loss (switch_load_balancing_loss_func, one layer, one
//   micro-batch): the same divided by K, so balanced routing gives 1, not K:
//       aux = E / (K N^2) * sum_e C_e Psum_e
//   Megatron seq_aux_loss (DeepSeek-V2/V3): the Megatron aux of each
//   sequence b (S rows, C_be, Psum_be), averaged over the B sequences:
//       aux = 1/B sum_b E / (K S^2) * sum_e C_be Psum_be
//   Megatron global_aux_loss: probabilities local, counts global (summed over
//   the data-parallel ranks, and averaged over the micro-batches so far):
//       aux = E / (K T^2) * sum_e C_global_e Psum_local_e
//     with T the rows of the micro-batch over those ranks: each rank's value
//     is its share, and the shares sum to the micro-batch's global aux.
//   z   = mean_t logsumexp(logits_t)^2    (ST-MoE; Megatron's z_loss_func)
//   entropy = mean_t -sum_e q log q        (top-p's dynamic loss)
#ifndef MOE_MOE_ROUTER_LOSSES_H_
#define MOE_MOE_ROUTER_LOSSES_H_

#include <cstdint>
#include <vector>

namespace moe {

// One router's per-call statistics (see the notation above).
struct RouterStats {
  int64_t rows = 0;  // N
  // [E]: C_e, the picks the balance losses count: per row, the top_k of the
  // scores with neither group limit nor expert bias (as Hugging Face,
  // Megatron-Core and DeepSeek-V3 count them), or the top-p set.
  std::vector<double> choice_counts;
  // [E]: the picks rows were actually routed to: the expert load, for
  // Router::UpdateExpertBias and the metrics. Equal to choice_counts unless
  // group-limited routing or the expert bias changed a choice.
  std::vector<double> routed_counts;
  std::vector<double> prob_sums;  // [E]: Psum_e
  double z_sum = 0;               // sum over rows of logsumexp(logits_t)^2
  double entropy_sum = 0;         // sum over rows of -sum_e q log q

  // Pools `other` into this (an empty this takes other's E).
  void Add(const RouterStats& other);
};

// Per-sequence statistics for the sequence-level aux loss: the rows of one
// Router::Forward call form `sequences` contiguous blocks of equal length.
struct SequenceStats {
  int64_t sequences = 0;              // B
  int64_t rows_per_sequence = 0;      // S
  std::vector<double> choice_counts;  // [B, E]: C_be
  std::vector<double> prob_sums;      // [B, E]: Psum_be

  // Pools another shard of the same B sequences (context parallelism): the
  // sums and the rows per sequence add up. An empty this takes other's shape.
  void Add(const SequenceStats& other);
};

struct LoadBalancingLoss {
  double aux = 0;   // the aux value (formulas above)
  double loss = 0;  // coefficient * aux: the term to add to the training loss
  // d(loss_scale * loss) / d q[t, e], the same for every row it covers.
  // Pass to Router::Backward (RouterLossGrads::daux_dprob_E).
  std::vector<double> daux_dprob;
};
// Hugging Face's aux loss, from statistics pooled over every layer's router.
// Model parity with MixtralForCausalLM depends on it: keep it as is.
LoadBalancingLoss ComputeLoadBalancingLoss(const RouterStats& pooled, double coefficient,
                                           double loss_scale);
// Megatron-Core's aux_loss of one layer on one micro-batch.
LoadBalancingLoss ComputeSwitchLoadBalancingLoss(const RouterStats& layer, double coefficient,
                                                 double loss_scale);
// Megatron-Core's global_aux_loss: `local` is this rank's statistics of one
// layer on this micro-batch (for Psum and K); tokens_per_expert_E and
// total_rows come from the caller, which sums choice_counts over the ranks
// (Megatron: tensor x data x context parallel) and, for Megatron's running
// mean, averages them over the micro-batches so far in the global batch;
// total_rows is the micro-batch's rows over the same ranks. The value is this
// rank's share; summed over the ranks it is the global-batch aux.
LoadBalancingLoss ComputeGlobalLoadBalancingLoss(const RouterStats& local,
                                                 const std::vector<double>& tokens_per_expert_E,
                                                 double total_rows, double coefficient,
                                                 double loss_scale);

struct SequenceLoadBalancingLoss {
  double aux = 0;
  double loss = 0;
  // [B, E]: d(loss_scale * loss) / d q[t, e] for the rows t of sequence b.
  // Pass to Router::Backward (RouterLossGrads::daux_dprob_BE).
  std::vector<double> daux_dprob;
};
// Megatron-Core's seq_aux_loss of one layer (its sequences pooled over the
// context-parallel ranks first, if any).
SequenceLoadBalancingLoss ComputeSequenceLoadBalancingLoss(const SequenceStats& layer,
                                                           double coefficient, double loss_scale);

struct ZLoss {
  double z = 0;     // mean_t logsumexp(logits_t)^2 of one layer
  double loss = 0;  // coefficient * z
  // d(loss_scale * loss) / d z_sum = coefficient * loss_scale / N. Pass to
  // Router::Backward as z_scale.
  double z_scale = 0;
};
// From one layer's statistics (the caller sums the layers' losses).
ZLoss ComputeZLoss(const RouterStats& layer, double coefficient, double loss_scale);

struct EntropyLoss {
  double entropy = 0;  // mean_t -sum_e q log q of one layer
  double loss = 0;     // coefficient * entropy (--moe_router_topp_entropy_coeff)
  // d(loss_scale * loss) / d entropy_sum = coefficient * loss_scale / N.
  // Pass to Router::Backward as entropy_scale.
  double entropy_scale = 0;
};
EntropyLoss ComputeEntropyLoss(const RouterStats& layer, double coefficient, double loss_scale);

// Everything Router::Backward needs besides d loss / d weights. Empty vectors
// and zero scales mean "no such loss".
struct RouterLossGrads {
  std::vector<double> daux_dprob_E;   // sum of the LoadBalancingLoss::daux_dprob in use
  std::vector<double> daux_dprob_BE;  // SequenceLoadBalancingLoss::daux_dprob
  double z_scale = 0;                 // ZLoss::z_scale
  double entropy_scale = 0;           // EntropyLoss::entropy_scale

  // daux_dprob_E += term (sizing it on first use), to combine aux losses.
  void AddAux(const std::vector<double>& term);
};

}  // namespace moe

#endif  // MOE_MOE_ROUTER_LOSSES_H_
