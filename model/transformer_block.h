// One Mixtral decoder layer (Hugging Face MixtralDecoderLayer), pre-norm:
//
//   h   = x + Attn(input_layernorm(x))
//   out = h + MoE(post_attention_layernorm(h))
//
// Parameters are named as Hugging Face saves them under
// "model.layers.{i}": input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, block_sparse_moe.{gate, experts.{e}.{w1,w2,w3}}.
//
// The MoE losses are the model's: it pools Output::stats over all layers
// (aux) or takes them per layer (z) and hands their gradients to Backward.
//
// Under tensor parallelism (ModelParallel::tensor_parallel(), always with
// sequence parallelism) x and y are this rank's sequence shard
// [batch, seq/TP, hidden]: the norms, the residual adds and the MoE layer
// work on the shard's tokens, and the attention is TpAttention, which
// gathers the sequence, runs this rank's heads and reduce-scatters back.
#ifndef MOE_MODEL_TRANSFORMER_BLOCK_H_
#define MOE_MODEL_TRANSFORMER_BLOCK_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/layers/rmsnorm.h"
#include "core/layers/rope.h"
#include "model/attention_block.h"
#include "model/config.h"
#include "model/model_parallel.h"
#include "moe/dense_mlp.h"
#include "moe/moe_layer.h"
#include "parallel/tensor_parallel/tp_attention.h"

namespace moe {

class TransformerBlock {
 public:
  struct Saved {
    RmsNorm::Saved input_layernorm;
    AttentionBlock::Saved self_attn;
    TpAttention::Saved tp_self_attn;  // under tensor parallelism, instead
    RmsNorm::Saved post_attention_layernorm;
    MoeLayer::Saved block_sparse_moe;
    DenseMlp::Saved mlp;  // a dense layer's, instead
  };
  struct Output {
    Tensor y;          // like x
    Tensor logits_TE;  // router logits [tokens of x, experts]
    RouterStats stats;
    SequenceStats seq_stats;
    std::vector<double> tokens_E;   // MoeLayer::Output::tokens_E
    std::vector<double> dropped_E;  // MoeLayer::Output::dropped_E
  };

  // Layer `layer_index` of `config` (which the caller has validated). Norm
  // weights start at one; the other weights are left uninitialised.
  TransformerBlock(int64_t layer_index, const ModelConfig& config, std::shared_ptr<const Rope> rope,
                   DType dtype = DType::kF32, Device device = Device::kCpu,
                   const ModelParallel& parallel = {});

  // x: [batch, seq, hidden] (the sequence shard under TP) -> Output.
  Output Forward(const Tensor& x, Saved* saved) const;
  // dy: like y. daux_dprob_E and z_scale: the router loss gradients (see
  // Router::Backward; empty / 0 for none). Returns dx (=); grads += .
  Tensor Backward(const Tensor& dy, const std::vector<double>& daux_dprob_E, double z_scale,
                  const Saved& saved);
  // The same with every router loss gradient (moe/router_losses.h).
  Tensor Backward(const Tensor& dy, const RouterLossGrads& losses, const Saved& saved);

  // In forward order: input_layernorm, self_attn (q, k, v, o),
  // post_attention_layernorm, block_sparse_moe (gate, then w1, w2, w3 per expert).
  std::vector<Parameter*> Parameters();
  RmsNorm& input_layernorm() { return input_layernorm_; }
  // The attention: AttentionBlock with one TP rank, TpAttention with more
  // (self_attn() dies under TP, tp_self_attn() returns null without).
  AttentionBlock& self_attn();
  TpAttention* tp_self_attn() { return tp_self_attn_ ? &*tp_self_attn_ : nullptr; }
  RmsNorm& post_attention_layernorm() { return post_attention_layernorm_; }
  // Whether this layer is an MoE layer (else a dense MLP, --moe_layer_freq).
  bool is_moe() const { return block_sparse_moe_.has_value(); }
  MoeLayer& block_sparse_moe();  // dies for a dense layer
  const std::string& name() const { return name_; }

 private:
  std::string name_;  // "model.layers.{i}"
  RmsNorm input_layernorm_;
  std::optional<AttentionBlock> self_attn_;  // one TP rank
  std::optional<TpAttention> tp_self_attn_;  // TP > 1
  RmsNorm post_attention_layernorm_;
  std::optional<MoeLayer> block_sparse_moe_;
  std::optional<DenseMlp> mlp_;  // "model.layers.{i}.mlp" in a dense layer
};

}  // namespace moe

#endif  // MOE_MODEL_TRANSFORMER_BLOCK_H_
