#include "model/transformer_block.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/layers/residual.h"

namespace moe {
namespace {

MoeOptions MoeOptionsOf(int64_t layer_index, const ModelConfig& config,
                        const ModelParallel& parallel) {
  MoeOptions options;
  options.hidden_size = config.hidden_size;
  options.intermediate_size = config.intermediate_size;
  options.num_experts = config.experts_of_layer(layer_index);
  options.top_k = config.num_experts_per_tok;
  options.capacity_factor = config.moe_expert_capacity_factor;
  options.drop_policy =
      config.moe_token_drop_policy == "position" ? DropPolicy::kPosition : DropPolicy::kProbs;
  options.pad_to_capacity = config.moe_pad_expert_input_to_capacity;
  options.dispatcher = parallel.dispatcher;
  // The model validated its config, so this cannot fail.
  options.router = *RouterOptionsOf(config);
  options.router.num_experts = options.num_experts;
  options.shared_expert_intermediate_size = config.moe_shared_expert_intermediate_size;
  options.use_residual = config.moe_use_residual;
  return options;
}

}  // namespace

TransformerBlock::TransformerBlock(int64_t layer_index, const ModelConfig& config,
                                   std::shared_ptr<const Rope> rope, DType dtype, Device device,
                                   const ModelParallel& parallel)
    : name_(absl::StrCat("model.layers.", layer_index)),
      input_layernorm_(name_ + ".input_layernorm", config.hidden_size, config.rms_norm_eps, dtype,
                       device),
      post_attention_layernorm_(name_ + ".post_attention_layernorm", config.hidden_size,
                                config.rms_norm_eps, dtype, device) {
  // An MoE layer, or (--moe_layer_freq) a dense SwiGLU MLP of the expert width.
  if (config.is_moe_layer(layer_index)) {
    block_sparse_moe_.emplace(name_ + ".block_sparse_moe",
                              MoeOptionsOf(layer_index, config, parallel), dtype, device,
                              parallel.ep, parallel.etp);
  } else {
    mlp_.emplace(name_ + ".mlp", config.hidden_size, config.intermediate_size, dtype, device);
  }
  // TP = 1 keeps the plain block (no communicator in its path).
  if (parallel.tensor_parallel()) {
    MOE_CHECK(parallel.sequence_parallel)
        << name_ << ": tensor parallelism needs sequence parallelism in an MoE model (each TP "
        << "rank routes its own sequence shard); set ModelParallel::sequence_parallel";
    const TpAttentionSizes sizes{.hidden_size = config.hidden_size,
                                 .num_attention_heads = config.num_attention_heads,
                                 .num_key_value_heads = config.num_key_value_heads,
                                 .head_dim = config.resolved_head_dim()};
    tp_self_attn_.emplace(name_ + ".self_attn", sizes, std::move(rope), parallel.tp,
                          /*sequence_parallel=*/true, dtype, device);
  } else {
    self_attn_.emplace(name_ + ".self_attn", config, std::move(rope), dtype, device);
  }
}

AttentionBlock& TransformerBlock::self_attn() {
  MOE_CHECK(self_attn_.has_value())
      << name_ << ": self_attn() is the one-rank attention; under tensor parallelism use "
      << "tp_self_attn()";
  return *self_attn_;
}

TransformerBlock::Output TransformerBlock::Forward(const Tensor& x, Saved* saved) const {
  // h = x + Attn(input_layernorm(x))
  const Tensor attn_in = input_layernorm_.Forward(x, &saved->input_layernorm);
  const Tensor attn_out = tp_self_attn_ ? tp_self_attn_->Forward(attn_in, &saved->tp_self_attn)
                                        : self_attn_->Forward(attn_in, &saved->self_attn);
  const Tensor h = ResidualAdd(name_.c_str(), x, attn_out);
  // out = h + MoE(post_attention_layernorm(h))   (or the dense MLP)
  const Tensor moe_in = post_attention_layernorm_.Forward(h, &saved->post_attention_layernorm);
  Output out;
  if (mlp_.has_value()) {
    out.y = ResidualAdd(name_.c_str(), h, mlp_->Forward(moe_in, &saved->mlp));
    return out;
  }
  MoeLayer::Output moe_out = block_sparse_moe_->Forward(moe_in, &saved->block_sparse_moe);
  out.y = ResidualAdd(name_.c_str(), h, moe_out.y);
  out.logits_TE = std::move(moe_out.logits_TE);
  out.stats = std::move(moe_out.stats);
  out.seq_stats = std::move(moe_out.seq_stats);
  out.tokens_E = std::move(moe_out.tokens_E);
  out.dropped_E = std::move(moe_out.dropped_E);
  return out;
}

Tensor TransformerBlock::Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E,
                                  double z_scale, const Saved& saved) {
  RouterLossGrads losses;
  losses.daux_dprob_E = daux_dprob_E;
  losses.z_scale = z_scale;
  return Backward(dy, losses, saved);
}

Tensor TransformerBlock::Backward(const Tensor& dy, const RouterLossGrads& losses,
                                  const Saved& saved) {
  // out = h + MoE(post_attention_layernorm(h)): dh = dy + (the MoE branch's dh).
  const Tensor dmoe_in = mlp_.has_value()
                             ? mlp_->Backward(dy, saved.mlp)
                             : block_sparse_moe_->Backward(dy, losses, saved.block_sparse_moe);
  Tensor dh = post_attention_layernorm_.Backward(dmoe_in, saved.post_attention_layernorm);
  ResidualAccumulate(name_.c_str(), &dh, dy);
  // h = x + Attn(input_layernorm(x)): dx = dh + (the attention branch's dx).
  const Tensor dattn_in = tp_self_attn_ ? tp_self_attn_->Backward(dh, saved.tp_self_attn)
                                        : self_attn_->Backward(dh, saved.self_attn);
  Tensor dx = input_layernorm_.Backward(dattn_in, saved.input_layernorm);
  ResidualAccumulate(name_.c_str(), &dx, dh);
  return dx;
}

std::vector<Parameter*> TransformerBlock::Parameters() {
  std::vector<Parameter*> params = {&input_layernorm_.weight()};
  for (Parameter* p : tp_self_attn_ ? tp_self_attn_->Parameters() : self_attn_->Parameters()) {
    params.push_back(p);
  }
  params.push_back(&post_attention_layernorm_.weight());
  for (Parameter* p : mlp_.has_value() ? mlp_->Parameters() : block_sparse_moe_->Parameters()) {
    params.push_back(p);
  }
  return params;
}

MoeLayer& TransformerBlock::block_sparse_moe() {
  MOE_CHECK(block_sparse_moe_.has_value())
      << name_ << " is a dense layer (--moe_layer_freq): it has no MoE block";
  return *block_sparse_moe_;
}

}  // namespace moe
