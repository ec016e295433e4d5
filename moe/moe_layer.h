// The Mixtral sparse MoE block (Hugging Face MixtralSparseMoeBlock), on one
// rank or over an expert-parallel group:
//
//   routing = Router(x)                               every rank, own tokens
//   ids     = DropOverCapacity(routing.ids)           with a capacity factor
//   rows    = dispatcher.Dispatch(x, ids)             to the experts' ranks
//   rows    = etp.Gather(rows)                         expert tensor parallel (ETP > 1)
//   out     = GroupedExperts.ForwardRows(rows)        this rank's experts (its ETP part)
//   out     = etp.ScatterSum(out)                     ETP > 1
//   y       = dispatcher.Combine(out, weights)        back, weighted, in token order
//   y       = c0 y + c1 mlp(x)                        Residual-MoE (use_residual)
//   y      += shared_expert(x)                        shared expert (its width > 0)
//
// The dense branches (shared expert, Residual-MoE's MLP) run while the
// tokens travel to the experts, and their backward while the last
// all-to-all of the backward is in flight.
// Backward is the same list reversed; the router's backward runs while the
// last all-to-all is in flight. Shape suffixes: see moe/permutation.h.
// Parameters are named as Hugging Face saves them under the block's name,
// e.g. "model.layers.0.block_sparse_moe": <name>.gate.weight [E, H],
// <name>.experts.{e}.{w1,w2,w3}.weight, e the global expert index (a rank
// holds only its EP block of experts).
//
// The aux and z losses are the caller's: it pools Output::stats over layers,
// calls ComputeLoadBalancingLoss / ComputeZLoss (moe/router.h) and hands the
// resulting gradients to Backward.
#ifndef MOE_MOE_MOE_LAYER_H_
#define MOE_MOE_MOE_LAYER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moe/capacity.h"
#include "moe/dense_mlp.h"
#include "moe/expert_tensor_exchange.h"
#include "moe/grouped_experts.h"
#include "moe/residual_moe.h"
#include "moe/router.h"
#include "moe/token_dispatcher.h"

namespace moe {

struct MoeOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // per expert
  int64_t num_experts = 8;        // Hugging Face num_local_experts
  int64_t top_k = 2;              // Hugging Face num_experts_per_tok
  // Score function, top-p, groups, expert bias (moe/router_options.h); its
  // num_experts and top_k are taken from the two fields above.
  RouterOptions router = {};
  // Megatron-Core's --moe_expert_capacity_factor: 0 = dropless; > 0 caps
  // each expert at ExpertCapacity(local tokens, ...) pairs (moe/capacity.h).
  double capacity_factor = 0;
  DropPolicy drop_policy = DropPolicy::kProbs;
  bool pad_to_capacity = false;  // needs capacity_factor > 0 and all-to-all
  DispatcherType dispatcher = DispatcherType::kAllToAll;
  // Megatron-Core's --moe_shared_expert_intermediate_size: an always-on dense
  // SwiGLU expert of this width added to the routed output; 0 = none.
  // Parameters "<name>.shared_expert.{gate,up,down}_proj.weight".
  int64_t shared_expert_intermediate_size = 0;
  // DeepSpeed-MoE's Residual-MoE (moe/residual_moe.h), its MLP as wide as an
  // expert. Parameters "<name>.residual.{coefficient,mlp.*}.weight".
  bool use_residual = false;
};

// InvalidArgument naming the field when an option is out of range
// (sizes >= 1, num_experts >= 1, top_k in [1, num_experts], capacity_factor
// >= 0, padding only with a capacity and the all-to-all dispatcher).
absl::Status ValidateMoeOptions(const MoeOptions& options);

class MoeLayer {
 public:
  struct Saved {
    Router::Saved router;
    TokenDispatcher::State dispatch;
    Tensor rows_RH;  // the experts' input rows (their weight gradients need them)
    std::vector<int64_t> expert_offsets;
    ExpertTensorExchange::Layout etp_layout;  // ETP > 1
    GroupedExperts::RowsSaved experts;
    DenseMlp::Saved shared_expert;
    ResidualMoe::Saved residual;
  };
  struct Output {
    Tensor y;          // like x
    Tensor logits_TE;  // router logits (Hugging Face's router_logits)
    RouterStats stats;
    SequenceStats seq_stats;  // for the sequence-level aux loss ([batch, seq, H] inputs)
    // Per global expert, this rank's tokens: pairs routed after dropping,
    // and pairs dropped at capacity.
    std::vector<double> tokens_E;
    std::vector<double> dropped_E;
  };

  // Dies with ValidateMoeOptions' message on bad options. Weights are left
  // uninitialised. CPU kF32 or kF64. `ep`: the expert-parallel group (must
  // outlive the layer; nullptr = one rank holds every expert); this rank
  // holds the experts of its EP block (moe/token_dispatcher.h). `etp`: the
  // expert-tensor-parallel group (nullptr = whole experts), over which each
  // expert's intermediate dimension is split.
  MoeLayer(std::string name, const MoeOptions& options, DType dtype = DType::kF32,
           Device device = Device::kCpu, Communicator* ep = nullptr, Communicator* etp = nullptr);

  // x: [..., H] (leading dimensions are flattened into T tokens; a 3-D
  // [batch, seq, H] input also gives per-sequence statistics).
  Output Forward(const Tensor& x, Saved* saved) const;
  // dy: like y. losses: the router loss gradients (moe/router_losses.h;
  // empty for none). Returns dx (=); every parameter grad += .
  Tensor Backward(const Tensor& dy, const RouterLossGrads& losses, const Saved& saved);
  // The aux ([E] or empty) and z terms only.
  Tensor Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E, double z_scale,
                  const Saved& saved);

  // The router's gate, then this rank's experts' (per expert w1, w2, w3),
  // then the shared expert's and Residual-MoE's, when present.
  std::vector<Parameter*> Parameters();
  Router& router() { return router_; }
  GroupedExperts& experts() { return experts_; }
  const MoeOptions& options() const { return options_; }
  const TokenDispatcher& dispatcher() const { return *dispatcher_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  MoeOptions options_;
  Router router_;
  std::unique_ptr<TokenDispatcher> dispatcher_;
  std::optional<ExpertTensorExchange> etp_;
  GroupedExperts experts_;
  std::optional<DenseMlp> shared_expert_;
  std::optional<ResidualMoe> residual_;
};

}  // namespace moe

#endif  // MOE_MOE_MOE_LAYER_H_
