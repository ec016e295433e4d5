// Causal grouped-query attention on the CPU, blockwise with online softmax
// (the FlashAttention schedule), so memory is O(seq x block), never O(seq^2).
//   q, out, dq, dout: [batch, seq, q_heads, head_dim]
//   k, v, dk, dv:     [batch, seq, kv_heads, head_dim]
//   lse:              [batch, q_heads, seq] (saved log-sum-exp of scaled scores)
// Query head h reads kv head h / (q_heads / kv_heads). Scores are scaled by
// `scale` (head_dim^-0.5 for Mixtral). Backward recomputes the probabilities
// block by block from q, k and lse.
// Gradient rule: dq =, dk =, dv = (activations).
#ifndef MOE_CORE_OPS_CPU_ATTENTION_H_
#define MOE_CORE_OPS_CPU_ATTENTION_H_

#include <cstdint>

namespace moe::cpu {

struct AttentionShape {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  double scale = 0;    // usually 1 / sqrt(head_dim)
  int64_t block = 64;  // query and key block size
};

template <typename T>
void AttentionForward(T* out, T* lse, const T* q, const T* k, const T* v,
                      const AttentionShape& shape);

template <typename T>
void AttentionBackward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                       const T* k, const T* v, const AttentionShape& shape);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_ATTENTION_H_
