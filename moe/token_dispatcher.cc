#include "moe/token_dispatcher.h"

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "moe/all_gather_dispatcher.h"
#include "moe/all_to_all_dispatcher.h"

namespace moe {

std::string_view DispatcherTypeName(DispatcherType type) {
  return type == DispatcherType::kAllToAll ? "alltoall" : "allgather";
}

absl::StatusOr<DispatcherType> ParseDispatcherType(std::string_view name) {
  if (name == "alltoall") return DispatcherType::kAllToAll;
  if (name == "allgather") return DispatcherType::kAllGather;
  return absl::InvalidArgumentError(absl::StrCat("--moe_token_dispatcher_type=", std::string(name),
                                                 ": expected alltoall or allgather"));
}

TokenDispatcher::TokenDispatcher(int64_t num_experts, Communicator* ep)
    : num_experts_(num_experts), ep_(ep) {
  MOE_CHECK(num_experts >= 1 && num_experts % ep_size() == 0)
      << "TokenDispatcher: " << num_experts << " experts cannot be split evenly over " << ep_size()
      << " expert-parallel ranks; choose --expert_model_parallel_size dividing "
      << "--num_experts";
}

std::unique_ptr<TokenDispatcher> MakeTokenDispatcher(DispatcherType type, int64_t num_experts,
                                                     Communicator* ep) {
  if (type == DispatcherType::kAllGather) {
    return std::make_unique<AllGatherDispatcher>(num_experts, ep);
  }
  return std::make_unique<AllToAllDispatcher>(num_experts, ep);
}

}  // namespace moe
