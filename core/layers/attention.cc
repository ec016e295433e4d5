#include "core/layers/attention.h"

#include <cmath>

#include "core/ops/cpu/attention.h"

namespace moe {
namespace {

void CheckCpuFloat(const Tensor& t, const char* name) {
  MOE_CHECK(t.device() == Device::kCpu) << "Attention: the CUDA attention is not built yet ("
                                        << name << " is " << t.Describe() << ")";
  MOE_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF64)
      << "Attention: " << name << " must be f32 or f64 on the CPU, got " << t.Describe();
}

template <typename T>
void ForwardCpu(const Tensor& q, const Tensor& k, const Tensor& v, const cpu::AttentionShape& shape,
                Tensor* out, Tensor* lse) {
  cpu::AttentionForward(out->data<T>(), lse->data<T>(), q.data<T>(), k.data<T>(), v.data<T>(),
                        shape);
}

template <typename T>
void BackwardCpu(const Tensor& dout, const Attention::Saved& s, const cpu::AttentionShape& shape,
                 Attention::Grads* g) {
  cpu::AttentionBackward(g->dq.data<T>(), g->dk.data<T>(), g->dv.data<T>(), dout.data<T>(),
                         s.out.data<T>(), s.lse.data<T>(), s.q.data<T>(), s.k.data<T>(),
                         s.v.data<T>(), shape);
}

}  // namespace

Attention::Attention(int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t block)
    : q_heads_(q_heads), kv_heads_(kv_heads), head_dim_(head_dim), block_(block) {
  MOE_CHECK(q_heads > 0 && kv_heads > 0 && head_dim > 0)
      << "Attention: q_heads, kv_heads and head_dim must be positive, got " << q_heads << ", "
      << kv_heads << ", " << head_dim;
  MOE_CHECK(q_heads % kv_heads == 0)
      << "Attention: q_heads (" << q_heads << ") must be a multiple of kv_heads (" << kv_heads
      << ") for grouped-query attention";
  MOE_CHECK(block > 0) << "Attention: block must be positive, got " << block;
}

Tensor Attention::Forward(const Tensor& q, const Tensor& k, const Tensor& v, Saved* saved) const {
  CheckCpuFloat(q, "q");
  MOE_CHECK(q.ndim() == 4 && q.dim(2) == q_heads_ && q.dim(3) == head_dim_)
      << "Attention: q must be [batch, seq, " << q_heads_ << ", " << head_dim_ << "], got "
      << q.Describe();
  const Shape kv_shape = {q.dim(0), q.dim(1), kv_heads_, head_dim_};
  MOE_CHECK(k.shape() == kv_shape && k.dtype() == q.dtype() && k.device() == q.device())
      << "Attention: k must be " << ShapeToString(kv_shape) << " like q " << q.Describe()
      << ", got " << k.Describe();
  MOE_CHECK(v.shape() == kv_shape && v.dtype() == q.dtype() && v.device() == q.device())
      << "Attention: v must be " << ShapeToString(kv_shape) << " like q " << q.Describe()
      << ", got " << v.Describe();

  const cpu::AttentionShape shape{.batch = q.dim(0),
                                  .seq = q.dim(1),
                                  .q_heads = q_heads_,
                                  .kv_heads = kv_heads_,
                                  .head_dim = head_dim_,
                                  .scale = 1.0 / std::sqrt(static_cast<double>(head_dim_)),
                                  .block = block_};
  Tensor out = Tensor::Empty(q.shape(), q.dtype());
  Tensor lse = Tensor::Empty({shape.batch, q_heads_, shape.seq}, q.dtype());
  if (q.dtype() == DType::kF64) {
    ForwardCpu<double>(q, k, v, shape, &out, &lse);
  } else {
    ForwardCpu<float>(q, k, v, shape, &out, &lse);
  }
  *saved = Saved{q, k, v, out, lse};
  return out;
}

Attention::Grads Attention::Backward(const Tensor& dout, const Saved& saved) const {
  CheckCpuFloat(dout, "dout");
  MOE_CHECK(saved.out.defined())
      << "Attention: Backward needs the Saved filled by Forward, got an empty one";
  MOE_CHECK(dout.shape() == saved.out.shape() && dout.dtype() == saved.out.dtype())
      << "Attention: dout " << dout.Describe() << " does not match the output "
      << saved.out.Describe();
  const cpu::AttentionShape shape{.batch = saved.q.dim(0),
                                  .seq = saved.q.dim(1),
                                  .q_heads = q_heads_,
                                  .kv_heads = kv_heads_,
                                  .head_dim = head_dim_,
                                  .scale = 1.0 / std::sqrt(static_cast<double>(head_dim_)),
                                  .block = block_};
  Grads grads{Tensor::Empty(saved.q.shape(), dout.dtype()),
              Tensor::Empty(saved.k.shape(), dout.dtype()),
              Tensor::Empty(saved.v.shape(), dout.dtype())};
  if (dout.dtype() == DType::kF64) {
    BackwardCpu<double>(dout, saved, shape, &grads);
  } else {
    BackwardCpu<float>(dout, saved, shape, &grads);
  }
  return grads;
}

}  // namespace moe
