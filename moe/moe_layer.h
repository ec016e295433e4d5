// The single-rank Mixtral sparse MoE block (Hugging Face MixtralSparseMoeBlock):
//   routing = Router(x);  y = GroupedExperts(x, routing.ids, routing.weights)
// Shape suffixes: see moe/permutation.h. Parameters are named as Hugging Face
// saves them under the block's name, e.g. "model.layers.0.block_sparse_moe":
//   <name>.gate.weight [E, H], <name>.experts.{e}.{w1,w2,w3}.weight.
//
// The aux and z losses are the caller's: it pools Output::stats over layers,
// calls ComputeLoadBalancingLoss / ComputeZLoss (moe/router.h) and hands the
// resulting gradients to Backward.
#ifndef MOE_MOE_MOE_LAYER_H_
#define MOE_MOE_MOE_LAYER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moe/grouped_experts.h"
#include "moe/router.h"

namespace moe {

struct MoeOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // per expert
  int64_t num_experts = 8;        // Hugging Face num_local_experts
  int64_t top_k = 2;              // Hugging Face num_experts_per_tok
};

// InvalidArgument naming the field when an option is out of range
// (sizes >= 1, num_experts >= 1, top_k in [1, num_experts]).
absl::Status ValidateMoeOptions(const MoeOptions& options);

class MoeLayer {
 public:
  struct Saved {
    Router::Saved router;
    GroupedExperts::Saved experts;
  };
  struct Output {
    Tensor y;          // like x
    Tensor logits_TE;  // router logits (Hugging Face's router_logits)
    RouterStats stats;
  };

  // Dies with ValidateMoeOptions' message on bad options. Weights are left
  // uninitialised. CPU kF32 or kF64.
  MoeLayer(std::string name, const MoeOptions& options, DType dtype = DType::kF32,
           Device device = Device::kCpu);

  // x: [..., H] (leading dimensions are flattened into T tokens).
  Output Forward(const Tensor& x, Saved* saved) const;
  // dy: like y. daux_dprob_E and z_scale: see Router::Backward (empty / 0 for
  // no aux / z loss). Returns dx (=); every parameter grad += .
  Tensor Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E, double z_scale,
                  const Saved& saved);

  // The router's gate, then the experts' (per expert w1, w2, w3).
  std::vector<Parameter*> Parameters();
  Router& router() { return router_; }
  GroupedExperts& experts() { return experts_; }
  const MoeOptions& options() const { return options_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  MoeOptions options_;
  Router router_;
  GroupedExperts experts_;
};

}  // namespace moe

#endif  // MOE_MOE_MOE_LAYER_H_
