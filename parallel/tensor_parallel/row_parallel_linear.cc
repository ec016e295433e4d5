#include "parallel/tensor_parallel/row_parallel_linear.h"

#include <utility>

#include "parallel/tensor_parallel/local_linear.h"
#include "parallel/tensor_parallel/sequence_parallel.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

Parameter ColumnShard(std::string name, int64_t in, int64_t out, Communicator* tp, DType dtype,
                      Device device) {
  name += ".weight";
  MOE_CHECK(tp != nullptr) << name << ": needs the tensor-parallel communicator, got null";
  MOE_CHECK(in > 0 && out > 0) << name << ": in_features and out_features must be positive, got "
                               << in << " and " << out;
  MOE_CHECK(in % tp->size() == 0)
      << name << ": in_features " << in << " is not divisible by the tensor-parallel size "
      << tp->size() << " (a row-parallel layer gives each TP rank an equal slice of the input "
      << "features)";
  MOE_CHECK(device == Device::kCuda || dtype == DType::kF32 || dtype == DType::kF64)
      << name << ": a CPU layer is kF32 or kF64, got " << DTypeName(dtype);
  const int64_t local = in / tp->size();
  return ShardedParameter(std::move(name), {out, in}, /*dim=*/1, tp->rank() * local, local, dtype,
                          device);
}

}  // namespace

RowParallelLinear::RowParallelLinear(std::string name, int64_t in_features, int64_t out_features,
                                     Communicator* tp, bool sequence_parallel, DType dtype,
                                     Device device)
    : in_features_(in_features),
      out_features_(out_features),
      tp_(tp),
      sequence_parallel_(sequence_parallel),
      weight_(ColumnShard(std::move(name), in_features, out_features, tp, dtype, device)) {}

Tensor RowParallelLinear::ForwardAsync(const Tensor& x, Saved* saved, HandlePtr* pending) const {
  const std::string& who = weight_.name;
  const Tensor& w = weight_.value;
  const int64_t local_in = local_in_features();
  if (sequence_parallel_) {
    MOE_CHECK(x.ndim() == 3 && x.dim(2) == local_in)
        << who << ": under sequence parallelism the input must be [batch, seq, " << local_in
        << "] (in_features " << in_features_ << " / TP " << tp_->size() << "), got "
        << x.Describe();
    SequenceShardLength(who, x, tp_->size());
  } else {
    MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == local_in)
        << who << ": input must be [..., " << local_in << "] (in_features " << in_features_
        << " / TP " << tp_->size() << "), got " << x.Describe();
  }
  MOE_CHECK(x.dtype() == w.dtype() && x.device() == w.device())
      << who << ": input " << x.Describe() << " vs weight " << w.Describe();
  const int64_t rows = x.numel() / local_in;
  Shape y_shape = x.shape();
  y_shape.back() = out_features_;
  const Tensor partial = LocalLinearForward(who, x.Reshape({rows, local_in}), w).Reshape(y_shape);
  saved->x = x;
  return ReduceOverTensorParallelAsync(who, partial, sequence_parallel_, tp_, pending);
}

Tensor RowParallelLinear::Forward(const Tensor& x, Saved* saved) const {
  HandlePtr pending;
  Tensor y = ForwardAsync(x, saved, &pending);
  pending->Wait();
  return y;
}

Tensor RowParallelLinear::Backward(const Tensor& dy, const Saved& saved) {
  const std::string& who = weight_.name;
  const Tensor& x = saved.x;
  MOE_CHECK(x.defined()) << who << ": Backward needs the Saved of a Forward call";
  Shape y_shape = x.shape();
  y_shape.back() = out_features_;
  if (sequence_parallel_) y_shape[1] /= tp_->size();
  MOE_CHECK(dy.shape() == y_shape && dy.dtype() == x.dtype() && dy.device() == x.device())
      << who << ": dy must be " << DTypeName(x.dtype()) << ShapeToString(y_shape) << " on "
      << DeviceName(x.device()) << ", got " << dy.Describe();
  // y's gradient is the same on every rank once the sequence is whole.
  const Tensor dy_full = sequence_parallel_ ? GatherSequence(who, dy, tp_) : dy;
  const int64_t rows = x.numel() / local_in_features();
  const Tensor dy2 = dy_full.Reshape({rows, out_features_});
  Tensor dx = Tensor::Empty(x.shape(), x.dtype(), x.device());
  Tensor dx2 = dx.Reshape({rows, local_in_features()});
  LocalLinearInputGrad(who, dy2, weight_.value, /*accumulate=*/false, &dx2);
  LocalLinearWeightGrad(who, dy2, x.Reshape({rows, local_in_features()}), &weight_.grad);
  return dx;
}

}  // namespace moe
