#include "moe/moe_layer.h"

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

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
  return absl::OkStatus();
}

MoeLayer::MoeLayer(std::string name, const MoeOptions& options, DType dtype, Device device)
    : name_(name),
      options_(CheckedOptions(name, options)),
      router_(name + ".gate", options.hidden_size, options.num_experts, options.top_k, dtype,
              device),
      experts_(name + ".experts", options.num_experts, options.hidden_size,
               options.intermediate_size, dtype, device) {}

MoeLayer::Output MoeLayer::Forward(const Tensor& x, Saved* saved) const {
  const int64_t hidden = options_.hidden_size;
  MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == hidden)
      << name_ << ": input must be [..., " << hidden << "], got " << x.Describe();
  const Tensor x_TH = x.Reshape({x.numel() / hidden, hidden});
  Routing routing = router_.Forward(x_TH, &saved->router);
  Output out;
  out.y = experts_.Forward(x_TH, routing.ids_TK, routing.weights_TK, &saved->experts)
              .Reshape(x.shape());
  out.logits_TE = std::move(routing.logits_TE);
  out.stats = std::move(routing.stats);
  return out;
}

Tensor MoeLayer::Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E, double z_scale,
                          const Saved& saved) {
  const Tensor& x_TH = saved.router.x_TH;
  MOE_CHECK(x_TH.defined()) << name_ << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dy.numel() == x_TH.numel() && dy.dim(-1) == options_.hidden_size)
      << name_ << ": dy must be like the input (" << x_TH.numel() / x_TH.dim(1) << " tokens of "
      << options_.hidden_size << "), got " << dy.Describe();
  GroupedExperts::Grads grads = experts_.Backward(dy.Reshape(x_TH.shape()), saved.experts);
  router_.BackwardAccumulate(grads.dweights_TK, daux_dprob_E, z_scale, saved.router, &grads.dx_TH);
  return grads.dx_TH.Reshape(dy.shape());
}

std::vector<Parameter*> MoeLayer::Parameters() {
  std::vector<Parameter*> params = router_.Parameters();
  for (Parameter* p : experts_.Parameters()) params.push_back(p);
  return params;
}

}  // namespace moe
