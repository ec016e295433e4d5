#include "moe/router_options.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace moe {

std::string_view ScoreFunctionName(ScoreFunction score_function) {
  return score_function == ScoreFunction::kSigmoid ? "sigmoid" : "softmax";
}

absl::StatusOr<ScoreFunction> ParseScoreFunction(std::string_view name) {
  if (name == "softmax") return ScoreFunction::kSoftmax;
  if (name == "sigmoid") return ScoreFunction::kSigmoid;
  return absl::InvalidArgumentError(absl::StrCat(
      "--moe_router_score_function must be softmax or sigmoid, got \"", std::string(name), "\""));
}

int64_t RouterOptions::width() const {
  if (!top_p()) return top_k;
  return topp_max_experts > 0 ? topp_max_experts : num_experts;
}

absl::Status ValidateRouterOptions(const RouterOptions& o) {
  const int64_t experts = o.num_experts;
  if (experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_experts must be >= 1, got ", experts, " (--num_experts)"));
  }
  if (o.top_k < 1 || o.top_k > experts) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be in [1, num_experts = ", experts,
                                                   "], got ", o.top_k, " (--moe_router_topk)"));
  }
  if (o.enable_expert_bias && o.score_function != ScoreFunction::kSigmoid) {
    return absl::InvalidArgumentError(
        "--moe_router_enable_expert_bias needs --moe_router_score_function=sigmoid (as in "
        "Megatron-Core: the bias shifts sigmoid scores); set it, or drop the expert bias");
  }
  if (o.pre_softmax && o.score_function == ScoreFunction::kSigmoid) {
    return absl::InvalidArgumentError(
        "--moe_router_pre_softmax has no effect with --moe_router_score_function=sigmoid "
        "(Megatron-Core ignores it there); unset one of them");
  }
  // Written so that NaN fails too.
  if (!(o.topp >= 0 && o.topp <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_topp must be in (0, 1], or 0 for top-k routing, got ", o.topp));
  }
  if (o.topp_max_experts < 0 || o.topp_max_experts > experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_topp_max_experts must be in [0, num_experts = ", experts,
                     "] (0 = no cap), got ", o.topp_max_experts));
  }
  if (o.topp_max_experts > 0 && !o.top_p()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_topp_max_experts=", o.topp_max_experts,
                     " caps top-p routing, which is off; set --moe_router_topp in (0, 1] or "
                     "drop the cap"));
  }
  if (o.top_p() && o.score_function != ScoreFunction::kSoftmax) {
    return absl::InvalidArgumentError(
        "--moe_router_topp needs --moe_router_score_function=softmax (top-p accumulates "
        "probabilities that sum to 1); use softmax, or top-k routing with sigmoid");
  }
  if (o.num_groups < 0 || o.group_topk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_num_groups and --moe_router_group_topk must be >= 0 (0 = off), "
                     "got ",
                     o.num_groups, " and ", o.group_topk));
  }
  if ((o.num_groups > 0) != (o.group_topk > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group-limited routing needs both --moe_router_num_groups and --moe_router_group_topk "
        "(e.g. num_groups = expert parallel size, group_topk = 1), or neither; got num_groups = ",
        o.num_groups, ", group_topk = ", o.group_topk));
  }
  if (o.num_groups == 0) return absl::OkStatus();
  if (o.top_p()) {
    return absl::InvalidArgumentError(
        "--moe_router_topp does not combine with group-limited routing; unset "
        "--moe_router_num_groups / --moe_router_group_topk, or use top-k routing");
  }
  if (experts % o.num_groups != 0) {
    int64_t divisor = o.num_groups;
    while (experts % divisor != 0) --divisor;
    return absl::InvalidArgumentError(absl::StrCat(
        "num_experts = ", experts, " must be divisible by --moe_router_num_groups = ", o.num_groups,
        " (experts form equal contiguous groups); e.g. --moe_router_num_groups=", divisor));
  }
  if (o.group_topk > o.num_groups) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_group_topk = ", o.group_topk,
                     " must be <= --moe_router_num_groups = ", o.num_groups));
  }
  if (o.group_topk > o.top_k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--moe_router_group_topk = ", o.group_topk, " must be <= --moe_router_topk = ", o.top_k,
        ": each group is scored by its top (top_k / group_topk) experts; e.g. "
        "--moe_router_group_topk=",
        o.top_k));
  }
  const int64_t reachable = o.group_topk * (experts / o.num_groups);
  if (o.top_k > reachable) {
    return absl::InvalidArgumentError(
        absl::StrCat("--moe_router_topk = ", o.top_k, " exceeds the ", reachable,
                     " experts in the ", o.group_topk, " chosen groups of ", experts / o.num_groups,
                     "; raise --moe_router_group_topk or lower --moe_router_topk"));
  }
  return absl::OkStatus();
}

}  // namespace moe
