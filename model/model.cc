#include "model/model.h"

#include <utility>

#include "core/philox.h"

namespace moe {
namespace {

const ModelConfig& CheckedConfig(const ModelConfig& config) {
  const absl::Status status = config.Validate();
  MOE_CHECK(status.ok()) << "Model: invalid config: " << status.message();
  return config;
}

// model.layers.{i}.input_layernorm, .post_attention_layernorm and model.norm.
bool IsNormWeight(std::string_view hf_name) { return hf_name.ends_with("norm.weight"); }

// model.layers.{i}.block_sparse_moe.experts.{e}.{w1,w2,w3}.weight
bool IsExpertWeight(std::string_view hf_name) {
  return hf_name.find(".block_sparse_moe.experts.") != std::string_view::npos;
}

}  // namespace

uint64_t ParameterStream(std::string_view hf_name) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a offset basis
  for (const char c : hf_name) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ull;  // FNV prime
  }
  return hash;
}

Model::Model(const ModelConfig& config, DType dtype, Device device, const ModelParallel& parallel)
    : config_(CheckedConfig(config)),
      dtype_(dtype),
      device_(device),
      rope_(std::make_shared<const Rope>(config_.resolved_head_dim(),
                                         config_.max_position_embeddings, config_.rope_theta, dtype,
                                         device)),
      embed_tokens_("model.embed_tokens", config_.vocab_size, config_.hidden_size, dtype, device),
      norm_("model.norm", config_.hidden_size, config_.rms_norm_eps, dtype, device),
      lm_head_("lm_head", config_.hidden_size, config_.vocab_size, dtype, device),
      lm_loss_(/*vocab_chunk=*/4096),
      router_loss_(config_, parallel.dp) {
  // Reserved up front: Parameters() points into the blocks, which must not move.
  layers_.reserve(config_.num_hidden_layers);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    layers_.emplace_back(i, config_, rope_, dtype, device, parallel);
  }
  for (Parameter* p : Parameters()) num_parameters_ += p->value.numel();
  // Counts are of the whole model: add the experts other EP ranks hold.
  const int64_t expert_params = 3 * config_.hidden_size * config_.intermediate_size;
  const int64_t held = layers_.empty() ? 0 : layers_[0].block_sparse_moe().experts().num_experts();
  num_parameters_ += config_.num_hidden_layers * (config_.num_local_experts - held) * expert_params;
  num_active_parameters_ =
      num_parameters_ - config_.num_hidden_layers *
                            (config_.num_local_experts - config_.num_experts_per_tok) *
                            expert_params;
}

void Model::InitializeWeights(uint64_t seed) {
  for (Parameter* p : Parameters()) {
    Tensor host = Tensor::Empty(p->value.shape(), p->value.dtype());
    if (IsNormWeight(p->name)) {
      for (int64_t i = 0; i < host.numel(); ++i) host.SetFromDouble(i, 1.0);
    } else {
      InitNormal(&host, ShardSlice::Whole(host.shape()), seed, ParameterStream(p->name),
                 /*mean=*/0.0, config_.initializer_range);
    }
    p->value.CopyFrom(host);
  }
}

std::vector<Parameter*> Model::Parameters() {
  std::vector<Parameter*> params = {&embed_tokens_.weight()};
  for (TransformerBlock& layer : layers_) {
    for (Parameter* p : layer.Parameters()) params.push_back(p);
  }
  params.push_back(&norm_.weight());
  params.push_back(&lm_head_.weight());
  return params;
}

std::vector<Model::Buffer> Model::Buffers() {
  std::vector<Buffer> buffers;
  if (!config_.moe_router_enable_expert_bias) return buffers;
  for (TransformerBlock& layer : layers_) {
    Router& router = layer.block_sparse_moe().router();
    buffers.push_back({router.expert_bias_name(), &router.expert_bias()});
  }
  return buffers;
}

std::vector<Parameter*> Model::ExpertParameters() {
  std::vector<Parameter*> params;
  for (Parameter* p : Parameters()) {
    if (IsExpertWeight(p->name)) params.push_back(p);
  }
  return params;
}

std::vector<Parameter*> Model::NonExpertParameters() {
  std::vector<Parameter*> params;
  for (Parameter* p : Parameters()) {
    if (!IsExpertWeight(p->name)) params.push_back(p);
  }
  return params;
}

Parameter* Model::FindParameter(std::string_view hf_name) {
  for (Parameter* p : Parameters()) {
    if (p->name == hf_name) return p;
  }
  return nullptr;
}

int64_t Model::NumParameters() const { return num_parameters_; }
int64_t Model::NumActiveParameters() const { return num_active_parameters_; }

void Model::CheckIds(const char* what, const Tensor& ids) const {
  MOE_CHECK(ids.ndim() == 2 && ids.dtype() == DType::kI32 && ids.device() == Device::kCpu)
      << "Model: " << what << " must be kI32 [batch, seq] on the CPU, got " << ids.Describe();
  MOE_CHECK(ids.dim(1) <= config_.max_position_embeddings)
      << "Model: " << what << " has " << ids.dim(1) << " positions, more than "
      << "max_position_embeddings = " << config_.max_position_embeddings;
}

Tensor Model::ForwardHidden(const Tensor& input_ids, Saved* saved, Routing* routing) {
  CheckIds("input_ids", input_ids);
  const int64_t layers = config_.num_hidden_layers;
  Embedding::Saved embed_scratch;
  TransformerBlock::Saved layer_scratch;
  RmsNorm::Saved norm_scratch;
  if (saved != nullptr) saved->layers.resize(layers);
  routing->stats.resize(layers);
  routing->seq_stats.resize(layers);
  routing->logits_TE.resize(layers);
  routing->tokens_E.resize(layers);
  routing->dropped_E.resize(layers);

  Tensor x = embed_tokens_.Forward(input_ids, saved ? &saved->embed_tokens : &embed_scratch);
  for (int64_t i = 0; i < layers; ++i) {
    TransformerBlock::Output out =
        layers_[i].Forward(x, saved ? &saved->layers[i] : &layer_scratch);
    x = std::move(out.y);
    routing->stats[i] = std::move(out.stats);
    routing->seq_stats[i] = std::move(out.seq_stats);
    routing->logits_TE[i] = std::move(out.logits_TE);
    routing->tokens_E[i] = std::move(out.tokens_E);
    routing->dropped_E[i] = std::move(out.dropped_E);
  }
  return norm_.Forward(x, saved ? &saved->norm : &norm_scratch);
}

Losses Model::ForwardLoss(const Tensor& input_ids, const Tensor& labels, Saved* saved,
                          Routing* routing, const RouterLossScales& scales,
                          RouterLossResult* router_losses) {
  CheckIds("labels", labels);
  MOE_CHECK(labels.shape() == input_ids.shape())
      << "Model: labels " << labels.Describe() << " must match input_ids " << input_ids.Describe();
  const Tensor hidden = ForwardHidden(input_ids, saved, routing);
  const int64_t tokens = input_ids.numel();
  CrossEntropy::Saved lm_scratch;
  const CrossEntropy::Result lm =
      lm_loss_.Forward(hidden.Reshape({tokens, config_.hidden_size}), lm_head_.weight().value,
                       labels.Reshape({tokens}), saved ? &saved->lm_loss : &lm_scratch);
  *router_losses = router_loss_.Compute(routing->stats, routing->seq_stats, scales,
                                        /*training=*/saved != nullptr);
  Losses losses;
  losses.lm_loss_sum = lm.loss_sum;
  losses.tokens = lm.tokens;
  losses.aux_loss = router_losses->aux;
  losses.z_loss = router_losses->z;
  losses.entropy_loss = router_losses->entropy;
  losses.expert_tokens = routing->tokens_E;
  losses.expert_dropped = routing->dropped_E;
  for (const RouterStats& layer : routing->stats) {
    losses.expert_routed.push_back(layer.routed_counts);
    losses.router_entropy.push_back(
        layer.rows > 0 ? layer.entropy_sum / static_cast<double>(layer.rows) : 0.0);
  }
  return losses;
}

Losses Model::ForwardBackward(const Tensor& input_ids, const Tensor& labels,
                              const LossScales& scales) {
  Saved saved;
  Routing routing;
  RouterLossResult router_losses;
  const Losses losses = ForwardLoss(input_ids, labels, &saved, &routing,
                                    {.aux = scales.aux, .z = scales.z}, &router_losses);

  // Backward: the forward's layer calls in reverse.
  Parameter& lm_head = lm_head_.weight();
  const Tensor dhidden = lm_loss_.Backward(scales.lm, lm_head.value, saved.lm_loss, &lm_head.grad);
  Tensor dx = norm_.Backward(dhidden.Reshape(saved.norm.x.shape()), saved.norm);
  for (int64_t i = config_.num_hidden_layers - 1; i >= 0; --i) {
    dx = layers_[i].Backward(dx, router_losses.grads[i], saved.layers[i]);
  }
  embed_tokens_.Backward(dx, saved.embed_tokens);
  return losses;
}

void Model::UpdateExpertBias(const std::vector<std::vector<double>>& routed_counts, double rate) {
  MOE_CHECK(routed_counts.size() == layers_.size())
      << "Model::UpdateExpertBias: " << routed_counts.size() << " layers of counts for "
      << layers_.size() << " layers";
  for (size_t i = 0; i < layers_.size(); ++i) {
    layers_[i].block_sparse_moe().router().UpdateExpertBias(routed_counts[i], rate);
  }
}

Losses Model::Evaluate(const Tensor& input_ids, const Tensor& labels) {
  Routing routing;
  RouterLossResult unused;
  return ForwardLoss(input_ids, labels, /*saved=*/nullptr, &routing, {.aux = 1, .z = 1}, &unused);
}

Tensor Model::Logits(const Tensor& input_ids) {
  Routing routing;
  const Tensor hidden = ForwardHidden(input_ids, /*saved=*/nullptr, &routing);
  Linear::Saved unused;
  const Tensor logits = lm_head_.Forward(hidden, &unused);
  return logits.dtype() == DType::kF32 ? logits : logits.Cast(DType::kF32);
}

std::vector<Tensor> Model::RouterLogits(const Tensor& input_ids) {
  Routing routing;
  ForwardHidden(input_ids, /*saved=*/nullptr, &routing);
  return routing.logits_TE;
}

}  // namespace moe
