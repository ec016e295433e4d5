// What a Router computes: the score function, top-k or top-p choice, group
// limits and the aux-loss-free expert bias. Field comments name the
// Megatron-LM flag each one mirrors; moe/router.h gives the semantics.
#ifndef MOE_MOE_ROUTER_OPTIONS_H_
#define MOE_MOE_ROUTER_OPTIONS_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

enum class ScoreFunction {
  kSoftmax,  // Mixtral, the default
  kSigmoid,  // DeepSeek-V3
};

// "softmax" / "sigmoid" (--moe_router_score_function).
std::string_view ScoreFunctionName(ScoreFunction score_function);
absl::StatusOr<ScoreFunction> ParseScoreFunction(std::string_view name);

struct RouterOptions {
  int64_t num_experts = 8;  // --num_experts
  // --moe_router_topk. Not read when topp > 0 (it is still validated, so a
  // default of 2 can stay on the command line).
  int64_t top_k = 2;
  ScoreFunction score_function = ScoreFunction::kSoftmax;  // --moe_router_score_function
  // --moe_router_pre_softmax: softmax over all experts, then top-k, no
  // renormalisation. Softmax only (Megatron-Core ignores it for sigmoid).
  bool pre_softmax = false;
  // --moe_router_topp: 0 = off (top-k routing); in (0, 1] = top-p dynamic
  // routing. Softmax only; no group limit, no expert bias.
  double topp = 0;
  // At most this many experts per token under top-p; 0 = no cap (up to all).
  int64_t topp_max_experts = 0;
  // --moe_router_num_groups / --moe_router_group_topk: group-limited
  // routing; both 0 = off.
  int64_t num_groups = 0;
  int64_t group_topk = 0;
  // --moe_router_enable_expert_bias: aux-loss-free balancing (sigmoid only,
  // as in Megatron-Core).
  bool enable_expert_bias = false;

  bool top_p() const { return topp > 0; }
  // Columns of Routing::ids_TK / weights_TK: top_k, or under top-p the cap
  // (topp_max_experts, or num_experts when uncapped).
  int64_t width() const;
};

// InvalidArgument naming the Megatron flag and a valid alternative; checked
// before anything is allocated.
absl::Status ValidateRouterOptions(const RouterOptions& options);

}  // namespace moe

#endif  // MOE_MOE_ROUTER_OPTIONS_H_
