// The Mixtral top-k softmax router (Hugging Face MixtralTopKRouter), with the
// statistics of the load-balancing (aux) loss and the router z-loss.
// Shape suffixes: see moe/permutation.h.
//
//   logits_TE  = x_TH gate^T                (kept in fp32; f64 for kF64 runs)
//   probs_TE   = softmax over all E experts
//   ids_TK     = the K largest, in decreasing order; ties go to the lower
//                expert index (selection compares logits, which order the
//                same way as the probabilities but are never rounded together)
//   weights_TK = those K probabilities divided by their sum
//
// Losses, both taken over "router rows" (tokens) and, for aux, pooled over
// layers as Hugging Face's load_balancing_loss_func does (it concatenates all
// layers' router logits before reducing):
//   aux = E * sum_e f_e * P_e,  f_e = (picks of e) / N, P_e = (sum of prob e) / N
//   z   = mean_t logsumexp(logits_t)^2   (ST-MoE / Megatron, per layer)
// The model adds coef * aux and coef_z * z (summed over layers) to its loss.
// d aux / d prob[t, e] = E * f_e / N is one constant per expert (f has no
// gradient: it comes from an argmax), so Router::Backward takes that [E]
// vector, already times the coefficient and the loss scale, from
// LoadBalancingLoss() on the pooled statistics.
#ifndef MOE_MOE_ROUTER_H_
#define MOE_MOE_ROUTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"

namespace moe {

// One router's per-call statistics. Exact sums (double), so that pooling over
// layers, micro-batches or ranks is a plain Add.
struct RouterStats {
  int64_t rows = 0;                   // N: router rows (tokens)
  std::vector<double> choice_counts;  // [E]: how many of the N * K picks chose e
  std::vector<double> prob_sums;      // [E]: sum over rows of prob[t, e]
  double z_sum = 0;                   // sum over rows of logsumexp(logits_t)^2

  // Pools `other` into this (an empty this takes other's E).
  void Add(const RouterStats& other);
};

struct LoadBalancingLoss {
  double aux = 0;   // E * sum_e f_e P_e, Hugging Face's load_balancing_loss_func value
  double loss = 0;  // coefficient * aux: the term to add to the training loss
  // d(loss_scale * loss) / d prob[t, e] for every router row of every pooled
  // layer: coefficient * loss_scale * E * f_e / N. Pass to Router::Backward.
  std::vector<double> daux_dprob;
};
// From statistics pooled over every router the loss is taken over.
LoadBalancingLoss ComputeLoadBalancingLoss(const RouterStats& pooled, double coefficient,
                                           double loss_scale);

struct ZLoss {
  double z = 0;     // mean_t logsumexp(logits_t)^2 of one layer
  double loss = 0;  // coefficient * z
  // d(loss_scale * loss) / d z_sum = coefficient * loss_scale / N. Pass to
  // Router::Backward as z_scale.
  double z_scale = 0;
};
// From one layer's statistics (the caller sums the layers' losses).
ZLoss ComputeZLoss(const RouterStats& layer, double coefficient, double loss_scale);

// What routing produced for one batch of tokens.
struct Routing {
  Tensor ids_TK;      // kI32 [T, K]
  Tensor weights_TK;  // [T, K], the input's dtype; each row sums to 1
  Tensor logits_TE;   // [T, E] (Hugging Face's router_logits)
  RouterStats stats;
};

class Router {
 public:
  // What backward needs: the input (for d gate), the logits (probabilities
  // and logsumexp are recomputed from them: O(T E)) and the choices. All three
  // are shared with the input and the returned Routing, so saving costs nothing.
  struct Saved {
    Tensor x_TH;
    Tensor logits_TE;
    Tensor ids_TK;
  };

  // The weight "<name>.weight" [E, H] (e.g. model.layers.0.block_sparse_moe.gate)
  // is left uninitialised for the model to fill; its grad starts at zero.
  // CPU kF32 or kF64.
  Router(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k,
         DType dtype = DType::kF32, Device device = Device::kCpu);

  // x_TH: [T, H] -> Routing.
  Routing Forward(const Tensor& x_TH, Saved* saved) const;

  // dweights_TK: d loss / d weights_TK (from the experts), like weights_TK.
  // daux_dprob_E: LoadBalancingLoss::daux_dprob, or empty for no aux loss.
  // z_scale: ZLoss::z_scale, or 0 for no z-loss.
  // Returns dx_TH (=); gate.grad += .
  Tensor Backward(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                  double z_scale, const Saved& saved);
  // The same, adding dx into *dx_TH (+=) instead of returning it, so the MoE
  // layer sums its two input gradients without an extra pass.
  void BackwardAccumulate(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                          double z_scale, const Saved& saved, Tensor* dx_TH);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t num_experts() const { return num_experts_; }
  int64_t top_k() const { return top_k_; }

 private:
  void BackwardInto(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                    double z_scale, const Saved& saved, Tensor* dx_TH, bool accumulate);

  int64_t hidden_size_;
  int64_t num_experts_;
  int64_t top_k_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_MOE_ROUTER_H_
