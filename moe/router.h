// The router family: gate logits -> scores -> top-k (or top-p) experts and
// their weights, with the statistics of the balancing losses
// (moe/router_losses.h). Shape suffixes: see moe/permutation.h; B sequences.
//
//   logits_TE = x_TH gate^T                 (kept in fp32; f64 for kF64 runs)
//
// Top-k routing (RouterOptions::top_k = K), by score function:
//   softmax (Mixtral, the default; Megatron's pre_softmax = false):
//     ids = the K largest logits; weights = softmax over all E, renormalised
//     over the K chosen. That is exactly softmax over the K chosen logits,
//     Megatron's "top-k then softmax"; Hugging Face MixtralTopKRouter.
//   softmax, pre_softmax: weights = softmax over all E at the K chosen, not
//     renormalised (they sum to less than 1).
//   sigmoid (DeepSeek-V3): s = sigmoid(logits); ids = the K largest s;
//     weights = s at the chosen, divided by their sum when K > 1 (Megatron;
//     no 1e-20 guard: a sum of sigmoids is never 0), s itself when K = 1.
// Group-limited routing (num_groups G, group_topk g): the E experts form G
// contiguous groups; a group's score is the sum of its top (K / g) selection
// scores (logits, probabilities or biased sigmoid scores, whichever the
// variant ranks by, as Megatron's group_limited_topk); the g best groups
// stay, and the K experts are chosen among their experts only.
// Expert bias (aux-loss-free balancing, DeepSeek-V3; sigmoid only): a
// non-trainable fp32 [E] buffer; experts are ranked by s + bias (also for the
// group scores), weights use the unbiased s. UpdateExpertBias moves it.
//
// Top-p routing (topp = P, "Harder Tasks Need More Experts"): probabilities
// = softmax over all E; per token the fewest experts, in descending
// probability, whose cumulative probability reaches P (at least one), at most
// topp_max_experts when that is > 0. Weights = their probabilities, not
// renormalised. The set size varies per token, the width does not:
// ids_TK / weights_TK have width() = topp_max_experts (or E) columns, the
// used slots first in descending probability, an unused slot holds id -1
// and weight 0 (dispatchers skip it; its dweight is ignored).
//
// Ties go to the lower expert (or group) index everywhere: selection compares
// logits where the variant allows (they order as the probabilities do but are
// never rounded together).
//
// Backward gives d loss / d x and d gate through the weights (a choice has no
// gradient) plus the balancing, z and entropy terms of RouterLossGrads.
#ifndef MOE_MOE_ROUTER_H_
#define MOE_MOE_ROUTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "moe/router_losses.h"
#include "moe/router_options.h"

namespace moe {

// What routing produced for one batch of tokens.
struct Routing {
  Tensor ids_TK;      // kI32 [T, K], K = Router::width(); -1 = unused top-p slot
  Tensor weights_TK;  // [T, K], the input's dtype
  Tensor logits_TE;   // [T, E] (Hugging Face's router_logits)
  RouterStats stats;
  SequenceStats seq_stats;  // filled when Forward was given a sequence length
};

class Router {
 public:
  // What backward needs: the input (for d gate), the logits (scores and
  // logsumexp are recomputed from them: O(T E)) and the choices. All three
  // are shared with the input and the returned Routing, so saving costs nothing.
  struct Saved {
    Tensor x_TH;
    Tensor logits_TE;
    Tensor ids_TK;
  };

  // The weight "<name>.weight" [E, H] (e.g. model.layers.0.block_sparse_moe.gate)
  // is left uninitialised for the model to fill; its grad starts at zero.
  // With enable_expert_bias, "<name>.expert_bias" [E] kF32 starts at zero.
  // Dies with ValidateRouterOptions' message, prefixed by the name, on bad
  // options. CPU kF32 or kF64.
  Router(std::string name, int64_t hidden_size, const RouterOptions& options,
         DType dtype = DType::kF32, Device device = Device::kCpu);
  // Mixtral's softmax top-k router.
  Router(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k,
         DType dtype = DType::kF32, Device device = Device::kCpu);

  // x_TH: [T, H] -> Routing. seq_length > 0 (it must divide T) also fills
  // Routing::seq_stats for the sequence-level aux loss: the rows are
  // T / seq_length sequences of seq_length consecutive tokens, as a
  // row-major [B, S, H] input flattens.
  Routing Forward(const Tensor& x_TH, Saved* saved, int64_t seq_length = 0) const;

  // dweights_TK: d loss / d weights_TK (from the experts), like weights_TK.
  // losses: the balancing / z / entropy gradients; daux_dprob_BE, when given,
  // must match the B of the Forward's seq_stats (rows in B equal blocks).
  // Returns dx_TH (=); gate.grad += .
  Tensor Backward(const Tensor& dweights_TK, const RouterLossGrads& losses, const Saved& saved);
  // The same, adding dx into *dx_TH (+=) instead of returning it, so the MoE
  // layer sums its two input gradients without an extra pass.
  void BackwardAccumulate(const Tensor& dweights_TK, const RouterLossGrads& losses,
                          const Saved& saved, Tensor* dx_TH);
  // The aux ([E], or empty) and z terms only.
  Tensor Backward(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                  double z_scale, const Saved& saved);
  void BackwardAccumulate(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                          double z_scale, const Saved& saved, Tensor* dx_TH);

  // Aux-loss-free balancing, once per global batch: bias_e += rate *
  // sign(mean_e' load_e' - load_e), so under-loaded experts gain. The caller
  // passes RouterStats::routed_counts summed over the whole global batch
  // (all micro-batches, all data-parallel ranks), so every rank moves the
  // bias identically.
  void UpdateExpertBias(const std::vector<double>& tokens_per_expert_E, double rate);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  // kF32 [E], undefined without enable_expert_bias. Not a Parameter: no
  // gradient, no optimizer; checkpoints save it under expert_bias_name().
  Tensor& expert_bias() { return expert_bias_; }
  const Tensor& expert_bias() const { return expert_bias_; }
  std::string expert_bias_name() const { return name_ + ".expert_bias"; }

  const RouterOptions& options() const { return options_; }
  const std::string& name() const { return name_; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t num_experts() const { return options_.num_experts; }
  // Columns of ids_TK / weights_TK (top_k, or the top-p width).
  int64_t width() const { return options_.width(); }
  // The same as width(), kept for callers that read it as the ids' width.
  int64_t top_k() const { return width(); }

 private:
  void BackwardInto(const Tensor& dweights_TK, const RouterLossGrads& losses, const Saved& saved,
                    Tensor* dx_TH, bool accumulate);

  std::string name_;
  int64_t hidden_size_;
  RouterOptions options_;
  Parameter weight_;
  Tensor expert_bias_;
};

}  // namespace moe

#endif  // MOE_MOE_ROUTER_H_
