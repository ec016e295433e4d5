#include "parallel/tensor_parallel/tp_attention.h"

#include <algorithm>
#include <utility>

#include "parallel/tensor_parallel/local_linear.h"
#include "parallel/tensor_parallel/sequence_parallel.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

TpAttentionSizes CheckedSizes(const std::string& name, const TpAttentionSizes& s,
                              Communicator* tp) {
  MOE_CHECK(tp != nullptr) << name << ": needs the tensor-parallel communicator, got null";
  MOE_CHECK(s.hidden_size > 0 && s.num_attention_heads > 0 && s.num_key_value_heads > 0 &&
            s.head_dim > 0)
      << name << ": hidden_size, num_attention_heads, num_key_value_heads and head_dim must be "
      << "positive, got " << s.hidden_size << ", " << s.num_attention_heads << ", "
      << s.num_key_value_heads << ", " << s.head_dim;
  MOE_CHECK(s.num_attention_heads % s.num_key_value_heads == 0)
      << name << ": num_attention_heads " << s.num_attention_heads
      << " must be a multiple of num_key_value_heads " << s.num_key_value_heads;
  const int64_t t = tp->size(), groups = s.num_key_value_heads;
  MOE_CHECK(s.num_attention_heads % t == 0)
      << name << ": num_attention_heads " << s.num_attention_heads
      << " is not divisible by the tensor-parallel size " << t << " (each TP rank holds whole "
      << "heads)";
  MOE_CHECK(groups >= t ? groups % t == 0 : t % groups == 0)
      << name << ": num_key_value_heads " << groups << " and the tensor-parallel size " << t
      << ": one must divide the other (TP ranks split the query groups evenly, or each group is "
      << "replicated on TP/groups ranks)";
  return s;
}

// Rows [first_head * head_dim, (first_head + heads) * head_dim) of a
// projection to `total_heads` heads.
Parameter HeadRows(const std::string& name, const TpAttentionSizes& s, int64_t total_heads,
                   int64_t first_head, int64_t heads, DType dtype, Device device) {
  return ShardedParameter(name + ".weight", {total_heads * s.head_dim, s.hidden_size}, 0,
                          first_head * s.head_dim, heads * s.head_dim, dtype, device);
}

template <typename T>
void AddCpu(T* dst, const T* src, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

void AddInto(Tensor* dst, const Tensor& src) {
  if (dst->dtype() == DType::kF64) {
    AddCpu(dst->data<double>(), src.data<double>(), dst->numel());
  } else {
    AddCpu(dst->data<float>(), src.data<float>(), dst->numel());
  }
}

}  // namespace

TpAttention::TpAttention(const std::string& name, const TpAttentionSizes& sizes,
                         std::shared_ptr<const Rope> rope, Communicator* tp, bool sequence_parallel,
                         DType dtype, Device device)
    : name_(name),
      sizes_(CheckedSizes(name, sizes, tp)),
      rope_(std::move(rope)),
      tp_(tp),
      sequence_parallel_(sequence_parallel),
      local_heads_(sizes.num_attention_heads / tp->size()),
      local_kv_heads_(std::max<int64_t>(1, sizes.num_key_value_heads / tp->size())),
      kv_replicas_(std::max<int64_t>(1, tp->size() / sizes.num_key_value_heads)),
      q_proj_(HeadRows(name + ".q_proj", sizes, sizes.num_attention_heads,
                       tp->rank() * local_heads_, local_heads_, dtype, device)),
      // With replicated groups, rank r's heads read group r / (TP/G).
      k_proj_(HeadRows(name + ".k_proj", sizes, sizes.num_key_value_heads,
                       tp->rank() / kv_replicas_ * local_kv_heads_, local_kv_heads_, dtype,
                       device)),
      v_proj_(HeadRows(name + ".v_proj", sizes, sizes.num_key_value_heads,
                       tp->rank() / kv_replicas_ * local_kv_heads_, local_kv_heads_, dtype,
                       device)),
      o_proj_(ShardedParameter(name + ".o_proj.weight",
                               {sizes.hidden_size, sizes.num_attention_heads * sizes.head_dim}, 1,
                               tp->rank() * local_heads_ * sizes.head_dim,
                               local_heads_ * sizes.head_dim, dtype, device)),
      attention_(local_heads_, local_kv_heads_, sizes.head_dim) {
  MOE_CHECK(rope_ != nullptr && rope_->head_dim() == sizes_.head_dim)
      << name_ << ": needs a Rope of head_dim " << sizes_.head_dim;
}

std::vector<Parameter*> TpAttention::Parameters() {
  return {&q_proj_, &k_proj_, &v_proj_, &o_proj_};
}

Tensor TpAttention::ForwardAsync(const Tensor& x, Saved* saved, HandlePtr* pending) const {
  const int64_t hidden = sizes_.hidden_size, hd = sizes_.head_dim;
  MOE_CHECK(x.ndim() == 3 && x.dim(2) == hidden)
      << name_ << ": input must be [batch, " << (sequence_parallel_ ? "seq/TP" : "seq") << ", "
      << hidden << "], got " << x.Describe();
  MOE_CHECK(x.dtype() == q_proj_.value.dtype() && x.device() == q_proj_.value.device())
      << name_ << ": input " << x.Describe() << " vs weights " << q_proj_.value.Describe();
  const Tensor x_full = sequence_parallel_ ? GatherSequence(name_, x, tp_) : x;
  const int64_t batch = x_full.dim(0), seq = x_full.dim(1), tokens = batch * seq;
  const Tensor x2 = x_full.Reshape({tokens, hidden});
  const std::string& who = name_;
  const Tensor q =
      LocalLinearForward(who, x2, q_proj_.value).Reshape({batch, seq, local_heads_, hd});
  const Tensor k =
      LocalLinearForward(who, x2, k_proj_.value).Reshape({batch, seq, local_kv_heads_, hd});
  const Tensor v =
      LocalLinearForward(who, x2, v_proj_.value).Reshape({batch, seq, local_kv_heads_, hd});
  const Tensor out = attention_.Forward(rope_->Forward(q), rope_->Forward(k), v, &saved->attention);
  // This rank's heads' share of o_proj: the sum over TP is y.
  const Tensor partial =
      LocalLinearForward(who, out.Reshape({tokens, local_heads_ * hd}), o_proj_.value)
          .Reshape({batch, seq, hidden});
  saved->x = x;
  return ReduceOverTensorParallelAsync(name_, partial, sequence_parallel_, tp_, pending);
}

Tensor TpAttention::Forward(const Tensor& x, Saved* saved) const {
  HandlePtr pending;
  Tensor y = ForwardAsync(x, saved, &pending);
  pending->Wait();
  return y;
}

Tensor TpAttention::Backward(const Tensor& dy, const Saved& saved) {
  MOE_CHECK(saved.attention.out.defined())
      << name_ << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dy.shape() == saved.x.shape() && dy.dtype() == saved.x.dtype() &&
            dy.device() == saved.x.device())
      << name_ << ": dy must be like the input " << saved.x.Describe() << ", got " << dy.Describe();
  const int64_t hidden = sizes_.hidden_size, hd = sizes_.head_dim;
  const std::string& who = name_;
  // Under SP the input is gathered again while o_proj and the attention core
  // run backward.
  Tensor x_full = saved.x;
  HandlePtr gather;
  if (sequence_parallel_) gather = GatherSequenceAsync(name_, saved.x, tp_, &x_full);
  const Tensor dy_full = sequence_parallel_ ? GatherSequence(name_, dy, tp_) : dy;
  const int64_t batch = dy_full.dim(0), seq = dy_full.dim(1), tokens = batch * seq;
  const Tensor dy2 = dy_full.Reshape({tokens, hidden});

  // o_proj (row-parallel): y's gradient is whole on every rank.
  const Tensor out2 = saved.attention.out.Reshape({tokens, local_heads_ * hd});
  Tensor dout = Tensor::Empty(out2.shape(), dy.dtype(), dy.device());
  LocalLinearInputGrad(who, dy2, o_proj_.value, /*accumulate=*/false, &dout);
  LocalLinearWeightGrad(who, dy2, out2, &o_proj_.grad);

  const Attention::Grads g =
      attention_.Backward(dout.Reshape(saved.attention.out.shape()), saved.attention);
  // RoPE is a rotation: its backward is the inverse rotation.
  const Tensor dq = rope_->Backward(g.dq).Reshape({tokens, local_heads_ * hd});
  const Tensor dk = rope_->Backward(g.dk).Reshape({tokens, local_kv_heads_ * hd});
  const Tensor dv = g.dv.Reshape({tokens, local_kv_heads_ * hd});

  // x feeds all three projections: one sum, then one collective over TP
  // (each rank's sum covers only its heads), running while the weight
  // gradients compute.
  Tensor dx_full = Tensor::Empty({batch, seq, hidden}, dy.dtype(), dy.device());
  Tensor dx2 = dx_full.Reshape({tokens, hidden});
  LocalLinearInputGrad(who, dq, q_proj_.value, false, &dx2);
  LocalLinearInputGrad(who, dk, k_proj_.value, true, &dx2);
  LocalLinearInputGrad(who, dv, v_proj_.value, true, &dx2);
  if (gather != nullptr) gather->Wait();
  HandlePtr dx_pending;
  Tensor dx = ReduceOverTensorParallelAsync(name_, dx_full, sequence_parallel_, tp_, &dx_pending);

  const Tensor x2 = x_full.Reshape({tokens, hidden});
  LocalLinearWeightGrad(who, dq, x2, &q_proj_.grad);
  if (kv_replicas_ == 1) {
    LocalLinearWeightGrad(who, dk, x2, &k_proj_.grad);
    LocalLinearWeightGrad(who, dv, x2, &v_proj_.grad);
  } else {
    // A replicated group's gradient is the sum of what the ranks sharing it
    // computed from their query heads. Each rank writes its increment at its
    // group's rows of a zeroed [2, G * head_dim, hidden] and the sum over TP
    // puts every group's total in place (other groups' rows are not read).
    const int64_t rows = sizes_.num_key_value_heads * hd, local_rows = local_kv_heads_ * hd;
    const int64_t begin = k_proj_.slice.offsets[0];
    Tensor sums = Tensor::Zeros({2, rows, hidden}, k_proj_.grad.dtype(), k_proj_.grad.device());
    Tensor dk_w = sums.View(begin * hidden, {local_rows, hidden});
    Tensor dv_w = sums.View((rows + begin) * hidden, {local_rows, hidden});
    LocalLinearWeightGrad(who, dk, x2, &dk_w);
    LocalLinearWeightGrad(who, dv, x2, &dv_w);
    tp_->AllReduceSync(sums, ReduceOp::kSum);
    AddInto(&k_proj_.grad, dk_w);
    AddInto(&v_proj_.grad, dv_w);
  }
  if (dx_pending != nullptr) dx_pending->Wait();
  return dx;
}

}  // namespace moe
