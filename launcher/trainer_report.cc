// The start-of-run report of the trainer (Trainer::Summary) and its memory
// estimate (MemoryReport), apart from the training loop.
#include "launcher/trainer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {
namespace {

std::string Count(int64_t n) {
  if (n >= 1'000'000'000) return absl::StrFormat("%.2fB", n / 1e9);
  if (n >= 1'000'000) return absl::StrFormat("%.2fM", n / 1e6);
  if (n >= 1'000) return absl::StrFormat("%.1fk", n / 1e3);
  return absl::StrCat(n);
}

std::string Bytes(double n) {
  if (n >= 1e9) return absl::StrFormat("%.2f GB", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.1f MB", n / 1e6);
  return absl::StrFormat("%.1f kB", n / 1e3);
}

}  // namespace

bool SimulatedNetworkOn(const SimulatedNetworkOptions& options) {
  return options.latency_us > 0 || options.bandwidth_gb_per_s > 0;
}

std::string DescribeSimulatedNetwork(const SimulatedNetworkOptions& o) {
  if (!SimulatedNetworkOn(o)) return "off";
  return absl::StrFormat(
      "on: alpha %g us per operation + bytes / beta, beta %s (ring all-reduce 2 (n-1)/n bytes, "
      "reduce-scatter and all-gather (n-1)/n; parallel/simulated_network.h)",
      o.latency_us,
      o.bandwidth_gb_per_s > 0
          ? absl::StrFormat("%g Gbit/s = %g GB/s", 8 * o.bandwidth_gb_per_s, o.bandwidth_gb_per_s)
          : std::string("unlimited"));
}

// Per rank, in bytes (fp32 everywhere on the CPU; N parameters held by the
// rank, DP ranks):
//   held                N = (embedding + LM head + q/o projections) / TP
//                       + k/v projections / min(TP, g) (query groups are
//                       replicated when fewer than TP) + the rest (norms,
//                       routers) whole + routed experts / EP
//   parameters          4 N
//   gradients           4 N in Parameter::grad, plus with DP > 1 or the
//                       distributed optimizer the flat bucket copy 4 N
//                       (+ 4 N / DP for the reduce-scattered chunk)
//   optimizer state     AdamW: exp_avg + exp_avg_sq = 8 N;
//                       distributed: master + exp_avg + exp_avg_sq of one
//                       chunk = 12 (ceil(dense / DP) + ceil(experts / EDP))
//   activations         per micro-batch of T = micro_batch_size * seq_length
//                       tokens, the tensors every layer's Saved holds, each
//                       counted on its own (so shared ones are counted twice:
//                       an over-estimate), 4 bytes each:
//                         per layer  S (8 h + E + 4 k + k (2 h + 3 f))
//                                    + T (4 a' d + 2 g' d + a')
//                         (norm inputs and outputs, router logits and ids,
//                         each routed row's expert input, w1/w3/SwiGLU
//                         outputs and output on the S = T / TP tokens of the
//                         sequence shard; q/k/v/out/lse of the a' = a / TP
//                         local heads and g' = max(1, g / TP) local groups
//                         over the whole sequence)
//                         head       T (h + 2) + 2 S h
//                       with h hidden, a heads, g query groups, d head dim,
//                       E experts, k top-k, f expert ffn width. Scratch of
//                       the layer being run is not included.
std::string MemoryReport(const TrainerOptions& o, int64_t num_parameters, int dp_size) {
  const ModelConfig& c = o.model;
  // The routed experts are split over EP and replicated over EDP = TP DP /
  // EP; the rest is split over TP where a layer splits it and replicated
  // over DP.
  const double tp = std::max(1, o.parallel.tp);
  const double ep = std::max(1, o.parallel.ep);
  const double dp = dp_size;
  const double edp = std::max(1.0, tp * dp / ep);
  const double h = c.hidden_size, a = c.num_attention_heads, g = c.num_key_value_heads,
               d = c.resolved_head_dim(), e = c.num_local_experts, k = c.num_experts_per_tok,
               f = c.intermediate_size, layers = c.num_hidden_layers;
  // Routed experts of every MoE layer (PR-MoE: each with its own count).
  double experts = 0;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.is_moe_layer(i)) experts += static_cast<double>(c.experts_of_layer(i)) * 3.0 * h * f;
  }
  const double split = 2.0 * c.vocab_size * h + layers * 2.0 * a * d * h;
  const double kv = layers * 2.0 * g * d * h;
  const double whole = static_cast<double>(num_parameters) - experts - split - kv;
  const double dense = split / tp + kv / std::min(tp, g) + whole;  // held by one rank
  const double n = dense + experts / ep;
  const double params = 4.0 * n;
  const double chunk = std::ceil(dense / dp) + std::ceil(experts / ep / edp);
  const bool buckets = dp_size > 1 || o.use_distributed_optimizer;
  const double grads =
      4.0 * n + (buckets ? 4.0 * n : 0.0) + (o.use_distributed_optimizer ? 4.0 * chunk : 0.0);
  const double adam = 8.0 * n;
  const double sharded = 12.0 * chunk;
  const double t = static_cast<double>(o.micro_batch_size * o.seq_length);
  const double shard = t / tp;  // tokens of the sequence shard
  const double local_heads = a / tp, local_groups = std::max(1.0, g / tp);
  const double per_layer = shard * (8 * h + e + 4 * k + k * (2 * h + 3 * f)) +
                           t * (4 * local_heads * d + 2 * local_groups * d + local_heads);
  const double activations = 4.0 * (layers * per_layer + t * (h + 2) + 2 * shard * h);
  const double optimizer = o.use_distributed_optimizer ? sharded : adam;
  std::string s;
  absl::StrAppendFormat(
      &s,
      "memory    per rank: params %s | grads %s | optimizer %s (AdamW %s; distributed over "
      "DP=%d %s)%s | activations <= %s per micro-batch | total ~%s\n",
      Bytes(params), Bytes(grads), Bytes(optimizer), Bytes(adam), dp_size, Bytes(sharded),
      o.use_distributed_optimizer ? " [distributed]" : "", Bytes(activations),
      Bytes(params + grads + optimizer + activations));
  return s;
}

std::string Trainer::Summary() const {
  const ModelConfig& c = options_.model;
  const TrainerOptions& o = options_;
  std::string s;
  absl::StrAppendFormat(
      &s,
      "model     Mixtral: %d layers | hidden %d | ffn %d | %d heads, %d query groups, head dim "
      "%d | %d experts, top-%d | vocab %d | rotary base %g | norm eps %g | init std %g\n",
      c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
      c.num_key_value_heads, c.resolved_head_dim(), c.num_local_experts, c.num_experts_per_tok,
      c.vocab_size, c.rope_theta, c.rms_norm_eps, c.initializer_range);
  absl::StrAppendFormat(&s, "params    %s total, %s active per token (%d total, %d active)\n",
                        Count(model_.NumParameters()), Count(model_.NumActiveParameters()),
                        model_.NumParameters(), model_.NumActiveParameters());
  absl::StrAppendFormat(
      &s,
      "batch     seq %d | micro %d | global %d (%d micro-batches) | %d tokens per step | %d "
      "steps\n",
      o.seq_length, o.micro_batch_size, o.global_batch_size,
      o.global_batch_size / o.micro_batch_size, o.global_batch_size * o.seq_length, o.train_iters);
  absl::StrAppendFormat(
      &s,
      "optimizer AdamW lr %g -> %g (%s, warmup %d, decay %d steps) | betas %g %g | eps %g | "
      "weight decay %g | clip %g | aux coeff %g | z coeff %g | seed %d\n",
      o.lr.max_lr, o.lr.min_lr, LrDecayStyleName(o.lr.decay_style), o.lr.warmup_iters,
      o.lr.decay_iters, o.adam.beta1, o.adam.beta2, o.adam.eps, o.adam.weight_decay, o.clip_grad,
      c.router_aux_loss_coef, c.router_z_loss_coef, o.seed);
  const int ep = ep_ != nullptr ? ep_->size() : 1;
  const int etp = etp_ != nullptr ? etp_->size() : 1;
  const std::string experts =
      edp_ == nullptr
          ? std::string("EP 1")
          : absl::StrFormat(
                "experts on ETP %d x EP %d x EDP %d (%d per rank, 1/%d of each, %s dispatcher)",
                etp, ep, edp_->size(), c.num_local_experts / ep, etp,
                DispatcherTypeName(o.moe_token_dispatcher_type));
  const std::string dense =
      tp_ == nullptr ? absl::StrFormat("DP %d (TP, CP, PP 1)", dp_->size())
                     : absl::StrFormat(
                           "TP %d with sequence parallel (per rank %d of %d heads, %d of %d "
                           "positions) x DP %d (CP, PP 1)",
                           tp_->size(), c.num_attention_heads / tp_->size(), c.num_attention_heads,
                           o.seq_length / tp_->size(), o.seq_length, dp_->size());
  absl::StrAppendFormat(&s,
                        "parallel  %d ranks: %s | %s | %d micro-batches per DP rank | %s "
                        "optimizer | gradient buckets of %d elements\n",
                        world_->size(), dense, experts,
                        o.global_batch_size / o.micro_batch_size / dp_->size(),
                        o.use_distributed_optimizer ? "distributed (ZeRO-1)" : "replicated",
                        ResolvedBucketElements(o, dp_->size()));
  if (SimulatedNetworkOn(o.sim_network)) {
    absl::StrAppendFormat(&s, "network   simulated %s\n", DescribeSimulatedNetwork(o.sim_network));
  }
  absl::StrAppend(&s, MemoryReport(o, model_.NumParameters(), dp_->size()));
  const int64_t steps_of_data = train_.num_samples() / o.global_batch_size;
  absl::StrAppendFormat(&s, "data      %s: %d samples (%d steps per pass)\n", o.data_path,
                        train_.num_samples(), steps_of_data);
  if (valid_.has_value()) {
    absl::StrAppendFormat(&s,
                          "valid     %s: %d samples; %d batches every %d steps and at the end\n",
                          o.valid_data_path, valid_->num_samples(), o.eval_iters, o.eval_interval);
  } else {
    absl::StrAppend(&s, "valid     none (set --valid_data_path to validate)\n");
  }
  return s;
}

}  // namespace moe
