#include "model/router_loss.h"

#include <algorithm>

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

  // Dense layers (--moe_layer_freq) have no router: empty statistics.
  const auto is_moe = [&](size_t i) { return !stats[i].choice_counts.empty(); };
  if (type == "hf_aux_loss") {
    RouterStats pooled;
    for (size_t i = 0; i < layers; ++i) {
      if (is_moe(i)) pooled.Add(stats[i]);
    }
    const LoadBalancingLoss aux = ComputeLoadBalancingLoss(pooled, coef, scales.aux);
    result.aux = aux.aux;
    for (size_t i = 0; i < layers; ++i) {
      if (is_moe(i)) result.grads[i].AddAux(aux.daux_dprob);
    }
  } else if (type == "aux_loss") {
    for (size_t i = 0; i < layers; ++i) {
      if (!is_moe(i)) continue;
      const LoadBalancingLoss aux = ComputeSwitchLoadBalancingLoss(stats[i], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].AddAux(aux.daux_dprob);
    }
  } else if (type == "seq_aux_loss") {
    MOE_CHECK(seq_stats.size() == layers)
        << "RouterLoss: seq_aux_loss needs per-sequence statistics of every layer";
    for (size_t i = 0; i < layers; ++i) {
      if (!is_moe(i)) continue;
      const SequenceLoadBalancingLoss aux =
          ComputeSequenceLoadBalancingLoss(seq_stats[i], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].daux_dprob_BE = aux.daux_dprob;
    }
  } else if (type == "global_aux_loss") {
    // Counts of every MoE layer (each with its own expert count) and the
    // micro-batch's rows, summed over the data-parallel ranks in one go.
    std::vector<size_t> offset(layers + 1, 0);
    for (size_t i = 0; i < layers; ++i) offset[i + 1] = offset[i] + stats[i].choice_counts.size();
    Tensor counts = Tensor::Empty({static_cast<int64_t>(offset[layers]) + 1}, DType::kF64);
    double* c = counts.data<double>();
    double rows = 0;
    for (size_t i = 0; i < layers; ++i) {
      std::copy(stats[i].choice_counts.begin(), stats[i].choice_counts.end(), c + offset[i]);
      if (is_moe(i)) rows = static_cast<double>(stats[i].rows);
    }
    c[offset[layers]] = rows;
    if (training && dp_ != nullptr && dp_->size() > 1) dp_->AllReduceSync(counts, ReduceOp::kSum);
    if (training) {
      if (global_counts_.empty()) {
        for (size_t i = 0; i < layers; ++i) {
          global_counts_.emplace_back(stats[i].choice_counts.size(), 0.0);
        }
      }
      ++micro_batches_;
    }
    for (size_t i = 0; i < layers; ++i) {
      if (!is_moe(i)) continue;
      std::vector<double> mean(stats[i].choice_counts.size());
      for (size_t e = 0; e < mean.size(); ++e) {
        if (training) {
          global_counts_[i][e] += c[offset[i] + e];
          mean[e] = global_counts_[i][e] / static_cast<double>(micro_batches_);
        } else {
          mean[e] = c[offset[i] + e];
        }
      }
      const LoadBalancingLoss aux =
          ComputeGlobalLoadBalancingLoss(stats[i], mean, c[offset[layers]], coef, scales.aux);
      result.aux += aux.aux;
      result.grads[i].AddAux(aux.daux_dprob);
    }
  }

  for (size_t i = 0; i < layers; ++i) {
    if (!is_moe(i)) continue;
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
