// The self-attention sub-block of a Mixtral decoder layer (Hugging Face
// MixtralAttention), from the normalised residual stream to what is added
// back to it:
//
//   q = rope(x Wq^T)   [batch, seq, heads, head_dim]       (self_attn.q_proj)
//   k = rope(x Wk^T)   [batch, seq, kv_heads, head_dim]    (self_attn.k_proj)
//   v = x Wv^T         [batch, seq, kv_heads, head_dim]    (self_attn.v_proj)
//   y = attention(q, k, v) Wo^T                            (self_attn.o_proj)
//
// Attention is causal, grouped-query (query head h reads kv head
// h / (heads / kv_heads)) and scaled by head_dim^-0.5; token s has position
// s. The rotary tables are shared by every layer of the model.
#ifndef MOE_MODEL_ATTENTION_BLOCK_H_
#define MOE_MODEL_ATTENTION_BLOCK_H_

#include <memory>
#include <string>
#include <vector>

#include "core/layers/attention.h"
#include "core/layers/linear.h"
#include "core/layers/rope.h"
#include "model/config.h"

namespace moe {

class AttentionBlock {
 public:
  // The projections save their common input once each: Tensors are shallow,
  // so the three copies share one buffer.
  struct Saved {
    Linear::Saved q_proj, k_proj, v_proj, o_proj;
    Attention::Saved attention;
  };

  // `name` is the Hugging Face prefix, e.g. "model.layers.0.self_attn".
  // Weights are left uninitialised (the model fills them). `rope` must have
  // the config's head_dim and the block's dtype and device.
  AttentionBlock(const std::string& name, const ModelConfig& config,
                 std::shared_ptr<const Rope> rope, DType dtype = DType::kF32,
                 Device device = Device::kCpu);

  // x: [batch, seq, hidden] -> y: [batch, seq, hidden].
  Tensor Forward(const Tensor& x, Saved* saved) const;
  // dy: like y -> dx (=); every weight grad += .
  Tensor Backward(const Tensor& dy, const Saved& saved);

  // q_proj, k_proj, v_proj, o_proj (Hugging Face's order).
  std::vector<Parameter*> Parameters();
  Linear& q_proj() { return q_proj_; }
  Linear& k_proj() { return k_proj_; }
  Linear& v_proj() { return v_proj_; }
  Linear& o_proj() { return o_proj_; }

 private:
  std::string name_;
  int64_t hidden_size_;
  int64_t heads_;
  int64_t kv_heads_;
  int64_t head_dim_;
  std::shared_ptr<const Rope> rope_;
  Linear q_proj_, k_proj_, v_proj_, o_proj_;
  Attention attention_;
};

}  // namespace moe

#endif  // MOE_MODEL_ATTENTION_BLOCK_H_
