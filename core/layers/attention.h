// Causal grouped-query self-attention core (Mixtral's scaled dot product
// after RoPE, before o_proj). No parameters: the projections are Linear
// layers around it. Query head h reads kv head h / (q_heads / kv_heads).
#ifndef MOE_CORE_LAYERS_ATTENTION_H_
#define MOE_CORE_LAYERS_ATTENTION_H_

#include <cstdint>

#include "core/tensor.h"

namespace moe {

class Attention {
 public:
  // What backward needs: the inputs, the output (for rowsum(dout * out)) and
  // the per-row log-sum-exp [batch, q_heads, seq], from which the
  // probabilities are recomputed block by block.
  struct Saved {
    Tensor q, k, v, out, lse;
  };
  struct Grads {
    Tensor dq, dk, dv;
  };

  // `block` is the query and key block size of the blockwise (FlashAttention)
  // schedule; it changes speed and scratch memory, not the result.
  Attention(int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t block = 64);

  // q: [batch, seq, q_heads, head_dim]; k, v: [batch, seq, kv_heads, head_dim]
  // -> out like q. Scores are scaled by head_dim^-0.5. CPU, kF32 or kF64.
  Tensor Forward(const Tensor& q, const Tensor& k, const Tensor& v, Saved* saved) const;
  // dout: like out -> dq, dk, dv (all =).
  Grads Backward(const Tensor& dout, const Saved& saved) const;

 private:
  int64_t q_heads_;
  int64_t kv_heads_;
  int64_t head_dim_;
  int64_t block_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_ATTENTION_H_
