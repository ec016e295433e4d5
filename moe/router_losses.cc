#include "moe/router_losses.h"

#include "core/check.h"

namespace moe {
namespace {

double Sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

void CheckStats(const RouterStats& stats, const char* function) {
  MOE_CHECK(stats.rows > 0 && !stats.choice_counts.empty() &&
            stats.prob_sums.size() == stats.choice_counts.size())
      << function << ": needs the statistics of at least one router row, got " << stats.rows
      << " rows and " << stats.choice_counts.size() << " experts";
}

// E / (K N^2) * sum_e C_e Psum_e: Megatron's switch_load_balancing_loss_func
// with K taken from `local`'s own picks.
LoadBalancingLoss MegatronAux(const RouterStats& local, const std::vector<double>& counts,
                              double total_rows, double coefficient, double loss_scale) {
  const size_t experts = counts.size();
  const double k = Sum(local.choice_counts) / static_cast<double>(local.rows);
  const double scale = static_cast<double>(experts) / (k * total_rows * total_rows);
  LoadBalancingLoss result;
  result.daux_dprob.resize(experts);
  for (size_t e = 0; e < experts; ++e) {
    result.aux += scale * counts[e] * local.prob_sums[e];
    result.daux_dprob[e] = coefficient * loss_scale * scale * counts[e];
  }
  result.loss = coefficient * result.aux;
  return result;
}

}  // namespace

void RouterStats::Add(const RouterStats& other) {
  if (choice_counts.empty() && rows == 0) {
    choice_counts.assign(other.choice_counts.size(), 0.0);
    routed_counts.assign(other.routed_counts.size(), 0.0);
    prob_sums.assign(other.prob_sums.size(), 0.0);
  }
  MOE_CHECK(choice_counts.size() == other.choice_counts.size() &&
            routed_counts.size() == other.routed_counts.size() &&
            prob_sums.size() == other.prob_sums.size())
      << "RouterStats::Add: pooling routers with " << choice_counts.size() << " and "
      << other.choice_counts.size() << " experts";
  rows += other.rows;
  for (size_t e = 0; e < choice_counts.size(); ++e) {
    choice_counts[e] += other.choice_counts[e];
    prob_sums[e] += other.prob_sums[e];
  }
  for (size_t e = 0; e < routed_counts.size(); ++e) routed_counts[e] += other.routed_counts[e];
  z_sum += other.z_sum;
  entropy_sum += other.entropy_sum;
}

void SequenceStats::Add(const SequenceStats& other) {
  if (sequences == 0 && choice_counts.empty()) {
    sequences = other.sequences;
    choice_counts.assign(other.choice_counts.size(), 0.0);
    prob_sums.assign(other.prob_sums.size(), 0.0);
  }
  MOE_CHECK(sequences == other.sequences && choice_counts.size() == other.choice_counts.size() &&
            prob_sums.size() == other.prob_sums.size())
      << "SequenceStats::Add: pooling " << sequences << " sequences of " << choice_counts.size()
      << " (sequence, expert) sums with " << other.sequences << " sequences of "
      << other.choice_counts.size();
  rows_per_sequence += other.rows_per_sequence;
  for (size_t i = 0; i < choice_counts.size(); ++i) {
    choice_counts[i] += other.choice_counts[i];
    prob_sums[i] += other.prob_sums[i];
  }
}

LoadBalancingLoss ComputeLoadBalancingLoss(const RouterStats& pooled, double coefficient,
                                           double loss_scale) {
  CheckStats(pooled, "ComputeLoadBalancingLoss");
  const size_t experts = pooled.choice_counts.size();
  const double n = static_cast<double>(pooled.rows);
  const double e_count = static_cast<double>(experts);
  LoadBalancingLoss result;
  result.daux_dprob.resize(experts);
  for (size_t e = 0; e < experts; ++e) {
    const double f = pooled.choice_counts[e] / n;
    result.aux += e_count * f * (pooled.prob_sums[e] / n);
    result.daux_dprob[e] = coefficient * loss_scale * e_count * f / n;
  }
  result.loss = coefficient * result.aux;
  return result;
}

LoadBalancingLoss ComputeSwitchLoadBalancingLoss(const RouterStats& layer, double coefficient,
                                                 double loss_scale) {
  CheckStats(layer, "ComputeSwitchLoadBalancingLoss");
  return MegatronAux(layer, layer.choice_counts, static_cast<double>(layer.rows), coefficient,
                     loss_scale);
}

LoadBalancingLoss ComputeGlobalLoadBalancingLoss(const RouterStats& local,
                                                 const std::vector<double>& tokens_per_expert_E,
                                                 double total_rows, double coefficient,
                                                 double loss_scale) {
  CheckStats(local, "ComputeGlobalLoadBalancingLoss");
  MOE_CHECK(tokens_per_expert_E.size() == local.choice_counts.size())
      << "ComputeGlobalLoadBalancingLoss: tokens_per_expert must have num_experts = "
      << local.choice_counts.size() << " entries, got " << tokens_per_expert_E.size();
  MOE_CHECK(total_rows >= static_cast<double>(local.rows))
      << "ComputeGlobalLoadBalancingLoss: total_rows (" << total_rows << ") must count this rank's "
      << local.rows << " rows and the other ranks'";
  return MegatronAux(local, tokens_per_expert_E, total_rows, coefficient, loss_scale);
}

SequenceLoadBalancingLoss ComputeSequenceLoadBalancingLoss(const SequenceStats& layer,
                                                           double coefficient, double loss_scale) {
  MOE_CHECK(layer.sequences > 0 && layer.rows_per_sequence > 0 && !layer.choice_counts.empty() &&
            layer.choice_counts.size() % layer.sequences == 0 &&
            layer.prob_sums.size() == layer.choice_counts.size())
      << "ComputeSequenceLoadBalancingLoss: needs per-sequence statistics (Router::Forward with a "
         "sequence length), got "
      << layer.sequences << " sequences of " << layer.rows_per_sequence << " rows and "
      << layer.choice_counts.size() << " sums";
  const size_t size = layer.choice_counts.size();
  const double b = static_cast<double>(layer.sequences);
  const double s = static_cast<double>(layer.rows_per_sequence);
  const double experts = static_cast<double>(size) / b;
  const double k = Sum(layer.choice_counts) / (b * s);
  const double scale = experts / (k * s * s * b);
  SequenceLoadBalancingLoss result;
  result.daux_dprob.resize(size);
  for (size_t i = 0; i < size; ++i) {
    result.aux += scale * layer.choice_counts[i] * layer.prob_sums[i];
    result.daux_dprob[i] = coefficient * loss_scale * scale * layer.choice_counts[i];
  }
  result.loss = coefficient * result.aux;
  return result;
}

ZLoss ComputeZLoss(const RouterStats& layer, double coefficient, double loss_scale) {
  MOE_CHECK(layer.rows > 0) << "ComputeZLoss: needs at least one router row";
  const double n = static_cast<double>(layer.rows);
  ZLoss result;
  result.z = layer.z_sum / n;
  result.loss = coefficient * result.z;
  result.z_scale = coefficient * loss_scale / n;
  return result;
}

EntropyLoss ComputeEntropyLoss(const RouterStats& layer, double coefficient, double loss_scale) {
  MOE_CHECK(layer.rows > 0) << "ComputeEntropyLoss: needs at least one router row";
  const double n = static_cast<double>(layer.rows);
  EntropyLoss result;
  result.entropy = layer.entropy_sum / n;
  result.loss = coefficient * result.entropy;
  result.entropy_scale = coefficient * loss_scale / n;
  return result;
}

void RouterLossGrads::AddAux(const std::vector<double>& term) {
  if (daux_dprob_E.empty()) daux_dprob_E.assign(term.size(), 0.0);
  MOE_CHECK(daux_dprob_E.size() == term.size()) << "RouterLossGrads::AddAux: adding " << term.size()
                                                << " experts' gradient to " << daux_dprob_E.size();
  for (size_t e = 0; e < term.size(); ++e) daux_dprob_E[e] += term[e];
}

}  // namespace moe
