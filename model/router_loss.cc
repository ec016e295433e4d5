#include "model/router_loss.h"

#include "core/check.h"

namespace moe {

RouterLoss::RouterLoss(const ModelConfig& config, Communicator* dp) : config_(config), dp_(dp) {}

void RouterLoss::StartGlobalBatch() {
  micro_batches_ = 0;
  global_counts_.clear();
}

RouterLossResult RouterLoss::Compute(const std::vector<RouterStats>& stats,
                                     const std::vector<SequenceStats>& seq_stats,
                                     const RouterLossScales& scales, bool training) {
  const size_t layers = stats.size();
  RouterLossResult result;
  result.grads.resize(layers);
  const std::string& type = config_.moe_router_load_balancing_type;
  const double coef = config_.router_aux_loss_coef;

  if (type == "hf_aux_loss") {
    RouterStats pooled;
    for (const RouterStats& layer : stats) pooled.Add(layer);
    const LoadBalancingLoss aux = ComputeLoadBalancingLoss(pooled, coef, scales.aux);
    result.aux = aux.aux;
    for (RouterLossGrads& g : result.grads) g.AddAux(aux.daux_dprob);
  } else if (type == "aux_loss") {
    for (size_t i = 0; i < layers; ++i) {
      const LoadBalancingLoss aux = ComputeSwitchLoadBalancingLoss(stats[i], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].AddAux(aux.daux_dprob);
    }
  } else if (type == "seq_aux_loss") {
    MOE_CHECK(seq_stats.size() == layers)
        << "RouterLoss: seq_aux_loss needs per-sequence statistics of every layer";
    for (size_t i = 0; i < layers; ++i) {
      const SequenceLoadBalancingLoss aux =
          ComputeSequenceLoadBalancingLoss(seq_stats[i], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].daux_dprob_BE = aux.daux_dprob;
    }
  } else if (type == "global_aux_loss") {
    // Counts and rows of this micro-batch over the data-parallel ranks.
    const int64_t experts = config_.num_local_experts;
    Tensor counts = Tensor::Empty({static_cast<int64_t>(layers) * experts + 1}, DType::kF64);
    double* c = counts.data<double>();
    for (size_t i = 0; i < layers; ++i) {
      for (int64_t e = 0; e < experts; ++e) c[i * experts + e] = stats[i].choice_counts[e];
    }
    c[layers * experts] = static_cast<double>(stats.empty() ? 0 : stats[0].rows);
    if (training && dp_ != nullptr && dp_->size() > 1) dp_->AllReduceSync(counts, ReduceOp::kSum);
    std::vector<std::vector<double>> mean(layers, std::vector<double>(experts));
    if (training) {
      if (global_counts_.empty()) global_counts_.assign(layers, std::vector<double>(experts, 0));
      ++micro_batches_;
    }
    for (size_t i = 0; i < layers; ++i) {
      for (int64_t e = 0; e < experts; ++e) {
        if (training) {
          global_counts_[i][e] += c[i * experts + e];
          mean[i][e] = global_counts_[i][e] / static_cast<double>(micro_batches_);
        } else {
          mean[i][e] = c[i * experts + e];
        }
      }
      const LoadBalancingLoss aux =
          ComputeGlobalLoadBalancingLoss(stats[i], mean[i], c[layers * experts], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].AddAux(aux.daux_dprob);
    }
  }

  for (size_t i = 0; i < layers; ++i) {
    const ZLoss z = ComputeZLoss(stats[i], config_.router_z_loss_coef, scales.z);
    result.z += z.z;
    result.grads[i].z_scale = z.z_scale;
    if (config_.moe_router_topp > 0) {
      const EntropyLoss entropy =
          ComputeEntropyLoss(stats[i], config_.moe_router_topp_entropy_coeff, scales.aux);
      result.entropy += entropy.entropy;
      result.grads[i].entropy_scale = entropy.entropy_scale;
    }
  }
  return result;
}

}  // namespace moe
