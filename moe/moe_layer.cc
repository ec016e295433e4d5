#include "moe/moe_layer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/layers/residual.h"

namespace moe {
namespace {

RouterOptions RouterOptionsOf(const MoeOptions& options) {
  RouterOptions router = options.router;
  router.num_experts = options.num_experts;
  router.top_k = options.top_k;
  return router;
}

const MoeOptions& CheckedOptions(const std::string& name, const MoeOptions& options) {
  const absl::Status status = ValidateMoeOptions(options);
  MOE_CHECK(status.ok()) << name << ": " << status.message();
  return options;
}

}  // namespace

absl::Status ValidateMoeOptions(const MoeOptions& options) {
  if (options.hidden_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("hidden_size must be >= 1, got ", options.hidden_size));
  }
  if (options.intermediate_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("intermediate_size must be >= 1, got ", options.intermediate_size));
  }
  if (options.num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_experts must be >= 1, got ", options.num_experts));
  }
  if (options.top_k < 1 || options.top_k > options.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_k must be in [1, num_experts = ", options.num_experts, "], got ", options.top_k));
  }
  if (absl::Status s = ValidateRouterOptions(RouterOptionsOf(options)); !s.ok()) return s;
  if (options.capacity_factor < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe_expert_capacity_factor must be > 0 (or unset for dropless), got ",
                     options.capacity_factor));
  }
  if (options.shared_expert_intermediate_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe_shared_expert_intermediate_size must be >= 0 (0 = no shared expert), got ",
        options.shared_expert_intermediate_size));
  }
  if (options.pad_to_capacity && options.capacity_factor <= 0) {
    return absl::InvalidArgumentError(
        "moe_pad_expert_input_to_capacity needs a capacity: set --moe_expert_capacity_factor");
  }
  if (options.pad_to_capacity && options.dispatcher != DispatcherType::kAllToAll) {
    return absl::InvalidArgumentError(
        "moe_pad_expert_input_to_capacity works with --moe_token_dispatcher_type=alltoall only");
  }
  return absl::OkStatus();
}

MoeLayer::MoeLayer(std::string name, const MoeOptions& options, DType dtype, Device device,
                   Communicator* ep, Communicator* etp)
    : name_(name),
      options_(CheckedOptions(name, options)),
      router_(name + ".gate", options.hidden_size, RouterOptionsOf(options), dtype, device),
      dispatcher_(MakeTokenDispatcher(options.dispatcher, options.num_experts, ep)),
      experts_(name + ".experts", dispatcher_->num_local_experts(), options.hidden_size,
               options.intermediate_size, dtype, device, dispatcher_->first_local_expert(),
               etp == nullptr ? 0 : etp->rank(), etp == nullptr ? 1 : etp->size()) {
  if (etp != nullptr && etp->size() > 1) etp_.emplace(etp, dispatcher_->num_local_experts());
  if (options_.shared_expert_intermediate_size > 0) {
    shared_expert_.emplace(name_ + ".shared_expert", options_.hidden_size,
                           options_.shared_expert_intermediate_size, dtype, device);
  }
  if (options_.use_residual) {
    residual_.emplace(name_ + ".residual", options_.hidden_size, options_.intermediate_size, dtype,
                      device);
  }
}

MoeLayer::Output MoeLayer::Forward(const Tensor& x, Saved* saved) const {
  const int64_t hidden = options_.hidden_size;
  MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == hidden)
      << name_ << ": input must be [..., " << hidden << "], got " << x.Describe();
  const Tensor x_TH = x.Reshape({x.numel() / hidden, hidden});
  Routing routing =
      router_.Forward(x_TH, &saved->router, /*seq_length=*/x.ndim() == 3 ? x.dim(1) : 0);
  Output out;
  const int64_t experts = options_.num_experts;
  out.dropped_E.assign(static_cast<size_t>(experts), 0.0);
  Tensor ids_TK = routing.ids_TK;
  int64_t pad_capacity = 0;
  if (options_.capacity_factor > 0) {
    // T * K pairs under top-k; under top-p the pairs the tokens actually chose.
    const int32_t* chosen = ids_TK.data<int32_t>();
    const int64_t pairs =
        std::count_if(chosen, chosen + ids_TK.numel(), [](int32_t e) { return e != kUnrouted; });
    const int64_t capacity = ExpertCapacity(pairs, 1, experts, options_.capacity_factor);
    ids_TK = DropOverCapacity(ids_TK, routing.weights_TK, experts, capacity, options_.drop_policy,
                              &out.dropped_E);
    if (options_.pad_to_capacity) pad_capacity = capacity;
  }
  out.tokens_E.assign(static_cast<size_t>(experts), 0.0);
  const int32_t* id = ids_TK.data<int32_t>();
  for (int64_t p = 0; p < ids_TK.numel(); ++p) {
    if (id[p] != kUnrouted) out.tokens_E[id[p]] += 1;
  }

  TokenDispatcher::State& state = saved->dispatch;
  dispatcher_->StartDispatch(x_TH, ids_TK, routing.weights_TK, pad_capacity, &state);
  // The dense branches need no routed token: they run while the rows travel.
  Tensor shared;
  if (shared_expert_.has_value()) shared = shared_expert_->Forward(x_TH, &saved->shared_expert);
  if (residual_.has_value()) residual_->ForwardBranch(x_TH, &saved->residual);
  ExpertInput in = dispatcher_->FinishDispatch(&state);
  if (etp_.has_value()) {
    std::vector<int64_t> gathered_offsets;
    in.rows_RH = etp_->Gather(in.rows_RH, in.expert_offsets, &saved->etp_layout, &gathered_offsets);
    in.expert_offsets = std::move(gathered_offsets);
  }
  Tensor expert_out = experts_.ForwardRows(in.rows_RH, in.expert_offsets, &saved->experts);
  if (etp_.has_value()) expert_out = etp_->ScatterSum(expert_out, saved->etp_layout);
  dispatcher_->StartCombine(expert_out, &state);
  Tensor y_TH = dispatcher_->FinishCombine(&state);
  if (residual_.has_value()) y_TH = residual_->Mix(y_TH, &saved->residual);
  if (shared.defined()) ResidualAccumulate(name_.c_str(), &y_TH, shared);
  out.y = y_TH.Reshape(x.shape());
  saved->rows_RH = std::move(in.rows_RH);
  saved->expert_offsets = std::move(in.expert_offsets);
  out.logits_TE = std::move(routing.logits_TE);
  out.stats = std::move(routing.stats);
  out.seq_stats = std::move(routing.seq_stats);
  return out;
}

Tensor MoeLayer::Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E, double z_scale,
                          const Saved& saved) {
  RouterLossGrads losses;
  losses.daux_dprob_E = daux_dprob_E;
  losses.z_scale = z_scale;
  return Backward(dy, losses, saved);
}

Tensor MoeLayer::Backward(const Tensor& dy, const RouterLossGrads& losses, const Saved& saved) {
  const Tensor& x_TH = saved.router.x_TH;
  MOE_CHECK(x_TH.defined()) << name_ << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dy.numel() == x_TH.numel() && dy.dim(-1) == options_.hidden_size)
      << name_ << ": dy must be like the input (" << x_TH.numel() / x_TH.dim(1) << " tokens of "
      << options_.hidden_size << "), got " << dy.Describe();
  const TokenDispatcher::State& state = saved.dispatch;
  const Tensor dy_TH = dy.Reshape(x_TH.shape());
  dispatcher_->StartCombineBackward(
      residual_.has_value() ? residual_->MoeGrad(dy_TH, saved.residual) : dy_TH, state);
  Tensor dweights_TK;
  Tensor dout_RH = dispatcher_->FinishCombineBackward(state, &dweights_TK);
  if (etp_.has_value()) dout_RH = etp_->GatherLike(dout_RH, saved.etp_layout);
  Tensor drows_RH =
      experts_.BackwardRows(dout_RH, saved.rows_RH, saved.expert_offsets, saved.experts);
  if (etp_.has_value()) drows_RH = etp_->ScatterSum(drows_RH, saved.etp_layout);
  dispatcher_->StartDispatchBackward(drows_RH, state);
  // The router's and the dense branches' gradients need only local data:
  // they run while the rows travel.
  Tensor dx_TH = router_.Backward(dweights_TK, losses, saved.router);
  if (shared_expert_.has_value()) {
    ResidualAccumulate(name_.c_str(), &dx_TH, shared_expert_->Backward(dy_TH, saved.shared_expert));
  }
  if (residual_.has_value()) {
    ResidualAccumulate(name_.c_str(), &dx_TH, residual_->BranchBackward(dy_TH, saved.residual));
  }
  ResidualAccumulate(name_.c_str(), &dx_TH, dispatcher_->FinishDispatchBackward(state));
  return dx_TH.Reshape(dy.shape());
}

std::vector<Parameter*> MoeLayer::Parameters() {
  std::vector<Parameter*> params = router_.Parameters();
  for (Parameter* p : experts_.Parameters()) params.push_back(p);
  if (shared_expert_.has_value()) {
    for (Parameter* p : shared_expert_->Parameters()) params.push_back(p);
  }
  if (residual_.has_value()) {
    for (Parameter* p : residual_->Parameters()) params.push_back(p);
  }
  return params;
}

}  // namespace moe
