// The self-attention sub-block (model/attention_block.h: q/k/v projections,
// RoPE, causal grouped-query attention, o_proj) with its heads split over
// the TP group, as in Megatron-Core's SelfAttention:
//
//   q_proj, k_proj, v_proj: column-parallel (this rank's heads' rows)
//   attention:              on this rank's heads only, no communication
//   o_proj:                 row-parallel (the same heads' columns)
//
// Rank r holds query heads [r H/TP, (r+1) H/TP). With G key/value heads
// (query groups): G >= TP splits them too, G/TP per rank; G < TP gives each
// rank the one group its query heads read, group r / (TP/G), so TP/G ranks
// hold a copy of it ("replicated KV"). A replicated k/v weight's gradient is
// summed over the ranks sharing it inside Backward, so each copy holds the
// whole-model gradient of its slice.
//
//   without SP: x [batch, seq, hidden] -> y [batch, seq, hidden]
//               (one all-reduce forward, one backward)
//   with SP:    x [batch, seq/TP, hidden] -> y [batch, seq/TP, hidden]
//               (gather + reduce-scatter each way)
//
// The input is gathered once for the three projections, and their three
// input gradients are summed before one collective, which runs while the
// weight gradients compute. Gradient rule: every weight grad += ; dx = .
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_TP_ATTENTION_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_TP_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/layers/attention.h"
#include "core/layers/parameter.h"
#include "core/layers/rope.h"
#include "parallel/communicator.h"

namespace moe {

// The whole (unsharded) attention's sizes, Hugging Face's names.
struct TpAttentionSizes {
  int64_t hidden_size = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
};

class TpAttention {
 public:
  // What backward needs: the input as Forward got it (the sequence shard
  // under SP, gathered again in backward while o_proj and attention run
  // backward) and the attention core's Saved (q, k, v after RoPE, its
  // output, which is o_proj's input, and lse).
  struct Saved {
    Tensor x;
    Attention::Saved attention;
  };

  // `name` is the Hugging Face prefix ("model.layers.0.self_attn"); the
  // weights "<name>.{q,k,v,o}_proj.weight" are this rank's slices (their
  // Parameter::slice says which), left uninitialised. num_attention_heads
  // must be divisible by the TP size, and of num_key_value_heads and TP one
  // must divide the other. `rope` has head_dim and the layer's dtype; `tp`
  // (the GroupKind::kTp communicator) must outlive the layer.
  TpAttention(const std::string& name, const TpAttentionSizes& sizes,
              std::shared_ptr<const Rope> rope, Communicator* tp, bool sequence_parallel,
              DType dtype = DType::kF32, Device device = Device::kCpu);

  Tensor Forward(const Tensor& x, Saved* saved) const;
  // The same, returned with o_proj's all-reduce (reduce-scatter) still
  // running: y is valid after (*pending)->Wait() (ladder residual).
  Tensor ForwardAsync(const Tensor& x, Saved* saved, HandlePtr* pending) const;
  // dy: like y -> dx like x.
  Tensor Backward(const Tensor& dy, const Saved& saved);

  // q_proj, k_proj, v_proj, o_proj (Hugging Face's order).
  std::vector<Parameter*> Parameters();
  Parameter& q_proj() { return q_proj_; }
  Parameter& k_proj() { return k_proj_; }
  Parameter& v_proj() { return v_proj_; }
  Parameter& o_proj() { return o_proj_; }
  int64_t local_heads() const { return local_heads_; }
  int64_t local_kv_heads() const { return local_kv_heads_; }
  // How many TP ranks hold each of this rank's k/v heads (1 unless G < TP).
  int64_t kv_replicas() const { return kv_replicas_; }

 private:
  std::string name_;
  TpAttentionSizes sizes_;
  std::shared_ptr<const Rope> rope_;
  Communicator* tp_;
  bool sequence_parallel_;
  int64_t local_heads_;
  int64_t local_kv_heads_;
  int64_t kv_replicas_;
  Parameter q_proj_, k_proj_, v_proj_, o_proj_;
  Attention attention_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_TP_ATTENTION_H_
