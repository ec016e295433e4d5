#include "model/model.h"

#include <algorithm>
#include <set>
#include <utility>

#include "core/philox.h"
#include "parallel/tensor_parallel/sequence_parallel.h"

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

// Where p's value sits in the whole tensor: its slice, or the whole of it
// for a Parameter made without one (the experts' per-expert views).
ShardSlice SliceOf(const Parameter& p) {
  if (p.slice.offsets.size() != p.value.shape().size()) return ShardSlice::Whole(p.value.shape());
  return p.slice;
}

Communicator* TensorParallelGroup(const ModelParallel& parallel) {
  return parallel.tensor_parallel() ? parallel.tp : nullptr;
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
      tp_(TensorParallelGroup(parallel)),
      rope_(std::make_shared<const Rope>(config_.resolved_head_dim(),
                                         config_.max_position_embeddings, config_.rope_theta, dtype,
                                         device)),
      norm_("model.norm", config_.hidden_size, config_.rms_norm_eps, dtype, device),
      router_loss_(config_, parallel.dp) {
  constexpr int64_t kVocabChunk = 4096;
  if (tp_ == nullptr) {
    embed_tokens_.emplace("model.embed_tokens", config_.vocab_size, config_.hidden_size, dtype,
                          device);
    lm_head_.emplace("lm_head", config_.hidden_size, config_.vocab_size, dtype, device);
    lm_loss_.emplace(kVocabChunk);
  } else {
    MOE_CHECK(parallel.sequence_parallel)
        << "Model: tensor parallelism (TP = " << tp_->size() << ") needs sequence parallelism "
        << "in an MoE model (Megatron-Core asserts the same); set "
        << "ModelParallel::sequence_parallel";
    tp_embed_tokens_.emplace("model.embed_tokens", config_.vocab_size, config_.hidden_size, tp_,
                             /*sequence_parallel=*/true, dtype, device);
    tp_lm_head_.emplace("lm_head", config_.hidden_size, config_.vocab_size, tp_,
                        /*sequence_parallel=*/true, dtype, device);
    tp_lm_loss_.emplace(tp_, /*sequence_parallel=*/true, kVocabChunk);
  }
  // Reserved up front: Parameters() points into the blocks, which must not move.
  layers_.reserve(config_.num_hidden_layers);
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    layers_.emplace_back(i, config_, rope_, dtype, device, parallel);
  }
  for (Parameter* p : Parameters()) num_parameters_ += NumElements(SliceOf(*p).global_shape);
  // Counts are of the whole model: add the experts other EP ranks hold.
  // Active per token: every MoE layer's experts counted top_k / E times.
  const int64_t expert_params = 3 * config_.hidden_size * config_.intermediate_size;
  int64_t inactive = 0;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    if (!layers_[i].is_moe()) continue;
    const int64_t experts = config_.experts_of_layer(i);
    num_parameters_ +=
        (experts - layers_[i].block_sparse_moe().experts().num_experts()) * expert_params;
    inactive += (experts - config_.num_experts_per_tok) * expert_params;
  }
  num_active_parameters_ = num_parameters_ - inactive;
}

void Model::InitializeWeights(uint64_t seed) {
  for (Parameter* p : Parameters()) {
    Tensor host = Tensor::Empty(p->value.shape(), p->value.dtype());
    if (IsNormWeight(p->name)) {
      for (int64_t i = 0; i < host.numel(); ++i) host.SetFromDouble(i, 1.0);
    } else {
      InitNormal(&host, SliceOf(*p), seed, ParameterStream(p->name), /*mean=*/0.0,
                 config_.initializer_range);
    }
    p->value.CopyFrom(host);
  }
}

std::vector<Parameter*> Model::Parameters() {
  std::vector<Parameter*> params = {tp_ ? &tp_embed_tokens_->weight() : &embed_tokens_->weight()};
  for (TransformerBlock& layer : layers_) {
    for (Parameter* p : layer.Parameters()) params.push_back(p);
  }
  params.push_back(&norm_.weight());
  params.push_back(tp_ ? &tp_lm_head_->weight() : &lm_head_->weight());
  return params;
}

std::vector<Model::Buffer> Model::Buffers() {
  std::vector<Buffer> buffers;
  if (!config_.moe_router_enable_expert_bias) return buffers;
  for (TransformerBlock& layer : layers_) {
    if (!layer.is_moe()) continue;
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

std::vector<Parameter*> Model::TpReplicatedParameters() {
  if (tp_ == nullptr) return {};
  // Everything but the split layers' slices (whose gradients are whole:
  // those layers gather the sequence) and the routed experts (reduced over
  // their own expert-data-parallel group).
  std::set<const Parameter*> split = {&tp_embed_tokens_->weight(), &tp_lm_head_->weight()};
  for (TransformerBlock& layer : layers_) {
    for (Parameter* p : layer.tp_self_attn()->Parameters()) split.insert(p);
  }
  std::vector<Parameter*> params;
  for (Parameter* p : NonExpertParameters()) {
    if (!split.contains(p)) params.push_back(p);
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

  Tensor x;
  if (tp_ != nullptr) {
    VocabParallelEmbedding::Saved tp_embed_scratch;
    x = tp_embed_tokens_->Forward(input_ids, saved ? &saved->tp_embed_tokens : &tp_embed_scratch);
  } else {
    x = embed_tokens_->Forward(input_ids, saved ? &saved->embed_tokens : &embed_scratch);
  }
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
  CrossEntropy::Result lm;
  if (tp_ != nullptr) {
    // The vocab-parallel loss gathers the sequence shards itself.
    VocabParallelCrossEntropy::Saved lm_scratch;
    lm = tp_lm_loss_->Forward(hidden, tp_lm_head_->weight().value, labels,
                              saved ? &saved->tp_lm_loss : &lm_scratch);
    SumRoutingOverTp(routing);
  } else {
    const int64_t tokens = input_ids.numel();
    CrossEntropy::Saved lm_scratch;
    lm = lm_loss_->Forward(hidden.Reshape({tokens, config_.hidden_size}), lm_head_->weight().value,
                           labels.Reshape({tokens}), saved ? &saved->lm_loss : &lm_scratch);
  }
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
  Parameter& lm_head = tp_ ? tp_lm_head_->weight() : lm_head_->weight();
  const Tensor dhidden =
      tp_ ? tp_lm_loss_->Backward(scales.lm, lm_head.value, saved.tp_lm_loss, &lm_head.grad)
          : lm_loss_->Backward(scales.lm, lm_head.value, saved.lm_loss, &lm_head.grad);
  const auto ready = [&](const std::vector<Parameter*>& params) {
    if (grad_ready_) grad_ready_(params);
  };
  ready({&lm_head});
  Tensor dx = norm_.Backward(dhidden.Reshape(saved.norm.x.shape()), saved.norm);
  ready({&norm_.weight()});
  for (int64_t i = config_.num_hidden_layers - 1; i >= 0; --i) {
    dx = layers_[i].Backward(dx, router_losses.grads[i], saved.layers[i]);
    ready(layers_[i].Parameters());
  }
  if (tp_ != nullptr) {
    tp_embed_tokens_->Backward(dx, saved.tp_embed_tokens);
    ready({&tp_embed_tokens_->weight()});
  } else {
    embed_tokens_->Backward(dx, saved.embed_tokens);
    ready({&embed_tokens_->weight()});
  }
  return losses;
}

void Model::UpdateExpertBias(const std::vector<std::vector<double>>& routed_counts, double rate) {
  MOE_CHECK(routed_counts.size() == layers_.size())
      << "Model::UpdateExpertBias: " << routed_counts.size() << " layers of counts for "
      << layers_.size() << " layers";
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i].is_moe()) {
      layers_[i].block_sparse_moe().router().UpdateExpertBias(routed_counts[i], rate);
    }
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
  Tensor logits;
  if (tp_ != nullptr) {
    // [batch, seq/TP, hidden] -> this rank's vocab columns of the whole
    // sequence -> every column.
    ColumnParallelLinear::Saved unused;
    logits = GatherLastDim(tp_lm_head_->Forward(hidden, &unused), tp_);
  } else {
    Linear::Saved unused;
    logits = lm_head_->Forward(hidden, &unused);
  }
  return logits.dtype() == DType::kF32 ? logits : logits.Cast(DType::kF32);
}

std::vector<Tensor> Model::RouterLogits(const Tensor& input_ids) {
  Routing routing;
  ForwardHidden(input_ids, /*saved=*/nullptr, &routing);
  if (tp_ == nullptr) return routing.logits_TE;
  // Each rank's rows are its shard [batch, seq/TP] flattened: gather the
  // shards back into token order.
  const int64_t batch = input_ids.dim(0);
  std::vector<Tensor> gathered;
  for (const Tensor& local : routing.logits_TE) {
    if (!local.defined()) {  // a dense layer
      gathered.emplace_back();
      continue;
    }
    const int64_t experts = local.dim(1);
    const Tensor shard = local.Reshape({batch, local.dim(0) / batch, experts});
    gathered.push_back(
        GatherSequence("Model::RouterLogits", shard, tp_).Reshape({input_ids.numel(), experts}));
  }
  return gathered;
}

void Model::SumRoutingOverTp(Routing* routing) const {
  // Every field that sums over tokens, in one flat buffer. The shapes are
  // the same on every TP rank (same config, same micro-batch).
  std::vector<double*> fields;
  std::vector<size_t> sizes;
  const auto add = [&](std::vector<double>* v) {
    fields.push_back(v->data());
    sizes.push_back(v->size());
  };
  const size_t layers = routing->stats.size();
  std::vector<double> rows(layers), rows_per_sequence(layers);
  for (size_t i = 0; i < layers; ++i) {
    RouterStats& stats = routing->stats[i];
    SequenceStats& seq = routing->seq_stats[i];
    rows[i] = static_cast<double>(stats.rows);
    rows_per_sequence[i] = static_cast<double>(seq.rows_per_sequence);
    add(&stats.choice_counts);
    add(&stats.routed_counts);
    add(&stats.prob_sums);
    fields.push_back(&stats.z_sum);
    sizes.push_back(1);
    fields.push_back(&stats.entropy_sum);
    sizes.push_back(1);
    add(&seq.choice_counts);
    add(&seq.prob_sums);
    add(&routing->tokens_E[i]);
    add(&routing->dropped_E[i]);
  }
  add(&rows);
  add(&rows_per_sequence);
  int64_t total = 0;
  for (size_t n : sizes) total += static_cast<int64_t>(n);
  Tensor flat = Tensor::Empty({total}, DType::kF64);
  double* out = flat.data<double>();
  for (size_t f = 0; f < fields.size(); ++f) out = std::copy_n(fields[f], sizes[f], out);
  tp_->AllReduceSync(flat, ReduceOp::kSum);
  const double* in = flat.data<double>();
  for (size_t f = 0; f < fields.size(); ++f) {
    std::copy_n(in, sizes[f], fields[f]);
    in += sizes[f];
  }
  // Counts of rows are whole numbers far below 2^53: exact in double.
  for (size_t i = 0; i < layers; ++i) {
    routing->stats[i].rows = static_cast<int64_t>(rows[i]);
    routing->seq_stats[i].rows_per_sequence = static_cast<int64_t>(rows_per_sequence[i]);
  }
}

}  // namespace moe
