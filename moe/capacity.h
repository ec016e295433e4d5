// Expert capacity and token dropping, with Megatron-Core's semantics
// (--moe_expert_capacity_factor, --moe_token_drop_policy).
//
// Each rank drops on its own tokens, before anything is dispatched:
//   capacity = ceil(T * K / E * capacity_factor)      T local tokens
// and every expert keeps at most `capacity` of the (token, choice) pairs
// routed to it: the ones with the largest routing weight (policy kProbs;
// weights within the same 2^-20 step count as ties, which go to the earlier
// pair, so that rounding noise never decides a drop) or the first ones in
// token order (kPosition).
// A dropped pair's id becomes kUnrouted: it is neither computed nor combined,
// so its weight gets no gradient, and the token keeps its other choices (a
// token whose every choice is dropped passes the layer as zero, i.e. only the
// residual carries it), as in Megatron-Core.
#ifndef MOE_MOE_CAPACITY_H_
#define MOE_MOE_CAPACITY_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace moe {

enum class DropPolicy {
  kProbs,     // keep each expert's highest-weight pairs
  kPosition,  // keep each expert's first pairs in token order
};
std::string_view DropPolicyName(DropPolicy policy);  // "probs" / "position"
absl::StatusOr<DropPolicy> ParseDropPolicy(std::string_view name);

// ceil(num_tokens * top_k / num_experts * capacity_factor), at least 1.
int64_t ExpertCapacity(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                       double capacity_factor);

// ids_TK: kI32 [T, K] (kUnrouted slots are ignored); weights_TK: [T, K]
// kF32/kF64, read for kProbs only. Returns the ids with every pair beyond its
// expert's capacity set to kUnrouted; *dropped_E[e] += the pairs dropped from
// expert e (dropped_E is resized to num_experts if empty).
Tensor DropOverCapacity(const Tensor& ids_TK, const Tensor& weights_TK, int64_t num_experts,
                        int64_t capacity, DropPolicy policy, std::vector<double>* dropped_E);

}  // namespace moe

#endif  // MOE_MOE_CAPACITY_H_
