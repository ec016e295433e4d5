#include "model/attention_block.h"

#include <utility>

#include "core/layers/residual.h"

namespace moe {

AttentionBlock::AttentionBlock(const std::string& name, const ModelConfig& config,
                               std::shared_ptr<const Rope> rope, DType dtype, Device device)
    : name_(name),
      hidden_size_(config.hidden_size),
      heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.resolved_head_dim()),
      rope_(std::move(rope)),
      q_proj_(name + ".q_proj", hidden_size_, heads_ * head_dim_, dtype, device),
      k_proj_(name + ".k_proj", hidden_size_, kv_heads_ * head_dim_, dtype, device),
      v_proj_(name + ".v_proj", hidden_size_, kv_heads_ * head_dim_, dtype, device),
      o_proj_(name + ".o_proj", heads_ * head_dim_, hidden_size_, dtype, device),
      attention_(heads_, kv_heads_, head_dim_) {
  MOE_CHECK(rope_ != nullptr && rope_->head_dim() == head_dim_)
      << name_ << ": needs a Rope of head_dim " << head_dim_;
}

Tensor AttentionBlock::Forward(const Tensor& x, Saved* saved) const {
  MOE_CHECK(x.ndim() == 3 && x.dim(2) == hidden_size_)
      << name_ << ": input must be [batch, seq, " << hidden_size_ << "], got " << x.Describe();
  const int64_t batch = x.dim(0), seq = x.dim(1);
  const Tensor q = q_proj_.Forward(x, &saved->q_proj).Reshape({batch, seq, heads_, head_dim_});
  const Tensor k = k_proj_.Forward(x, &saved->k_proj).Reshape({batch, seq, kv_heads_, head_dim_});
  const Tensor v = v_proj_.Forward(x, &saved->v_proj).Reshape({batch, seq, kv_heads_, head_dim_});
  const Tensor out = attention_.Forward(rope_->Forward(q), rope_->Forward(k), v, &saved->attention);
  return o_proj_.Forward(out.Reshape({batch, seq, heads_ * head_dim_}), &saved->o_proj);
}

Tensor AttentionBlock::Backward(const Tensor& dy, const Saved& saved) {
  MOE_CHECK(saved.attention.out.defined())
      << name_ << ": Backward needs the Saved of a Forward call";
  const Tensor dout = o_proj_.Backward(dy, saved.o_proj);
  const Attention::Grads grads =
      attention_.Backward(dout.Reshape(saved.attention.out.shape()), saved.attention);
  const int64_t batch = dy.dim(0), seq = dy.dim(1);
  // RoPE is a rotation: its backward is the inverse rotation.
  const Tensor dq = rope_->Backward(grads.dq).Reshape({batch, seq, heads_ * head_dim_});
  const Tensor dk = rope_->Backward(grads.dk).Reshape({batch, seq, kv_heads_ * head_dim_});
  const Tensor dv = grads.dv.Reshape({batch, seq, kv_heads_ * head_dim_});
  // x feeds all three projections: its gradient is the sum of theirs.
  Tensor dx = q_proj_.Backward(dq, saved.q_proj);
  ResidualAccumulate(name_.c_str(), &dx, k_proj_.Backward(dk, saved.k_proj));
  ResidualAccumulate(name_.c_str(), &dx, v_proj_.Backward(dv, saved.v_proj));
  return dx;
}

std::vector<Parameter*> AttentionBlock::Parameters() {
  return {&q_proj_.weight(), &k_proj_.weight(), &v_proj_.weight(), &o_proj_.weight()};
}

}  // namespace moe
