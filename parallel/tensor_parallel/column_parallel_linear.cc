#include "parallel/tensor_parallel/column_parallel_linear.h"

#include <cstring>
#include <utility>

#include "parallel/tensor_parallel/local_linear.h"
#include "parallel/tensor_parallel/sequence_parallel.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

Parameter RowShard(std::string name, int64_t in, int64_t out, Communicator* tp, DType dtype,
                   Device device) {
  name += ".weight";
  MOE_CHECK(tp != nullptr) << name << ": needs the tensor-parallel communicator, got null";
  MOE_CHECK(in > 0 && out > 0) << name << ": in_features and out_features must be positive, got "
                               << in << " and " << out;
  MOE_CHECK(out % tp->size() == 0)
      << name << ": out_features " << out << " is not divisible by the tensor-parallel size "
      << tp->size() << " (a column-parallel layer gives each TP rank an equal slice of the "
      << "output features)";
  MOE_CHECK(device == Device::kCuda || dtype == DType::kF32 || dtype == DType::kF64)
      << name << ": a CPU layer is kF32 or kF64, got " << DTypeName(dtype);
  const int64_t local = out / tp->size();
  return ShardedParameter(std::move(name), {out, in}, /*dim=*/0, tp->rank() * local, local, dtype,
                          device);
}

}  // namespace

ColumnParallelLinear::ColumnParallelLinear(std::string name, int64_t in_features,
                                           int64_t out_features, Communicator* tp,
                                           bool sequence_parallel, DType dtype, Device device)
    : in_features_(in_features),
      out_features_(out_features),
      tp_(tp),
      sequence_parallel_(sequence_parallel),
      weight_(RowShard(std::move(name), in_features, out_features, tp, dtype, device)) {}

Tensor ColumnParallelLinear::Forward(const Tensor& x, Saved* saved) const {
  const std::string& who = weight_.name;
  const Tensor& w = weight_.value;
  if (sequence_parallel_) {
    MOE_CHECK(x.ndim() == 3 && x.dim(2) == in_features_)
        << who << ": under sequence parallelism the input must be [batch, seq/TP, " << in_features_
        << "], got " << x.Describe();
  } else {
    MOE_CHECK(x.ndim() >= 1 && x.dim(-1) == in_features_)
        << who << ": input must be [..., " << in_features_ << "], got " << x.Describe();
  }
  MOE_CHECK(x.dtype() == w.dtype() && x.device() == w.device())
      << who << ": input " << x.Describe() << " vs weight " << w.Describe();
  const Tensor x_full = sequence_parallel_ ? GatherSequence(who, x, tp_) : x;
  const int64_t rows = x_full.numel() / in_features_;
  Shape y_shape = x_full.shape();
  y_shape.back() = local_out_features();
  saved->x = x;
  return LocalLinearForward(who, x_full.Reshape({rows, in_features_}), w).Reshape(y_shape);
}

Tensor ColumnParallelLinear::BackwardAsync(const Tensor& dy, const Saved& saved,
                                           HandlePtr* pending) {
  const std::string& who = weight_.name;
  MOE_CHECK(saved.x.defined()) << who << ": Backward needs the Saved of a Forward call";
  Shape x_shape = saved.x.shape();
  if (sequence_parallel_) x_shape[1] *= tp_->size();
  Shape y_shape = x_shape;
  y_shape.back() = local_out_features();
  MOE_CHECK(dy.shape() == y_shape && dy.dtype() == saved.x.dtype() &&
            dy.device() == saved.x.device())
      << who << ": dy must be " << DTypeName(saved.x.dtype()) << ShapeToString(y_shape) << " on "
      << DeviceName(saved.x.device()) << ", got " << dy.Describe();
  // Under SP the input is gathered again while dx's GEMM runs.
  Tensor x_full = saved.x;
  HandlePtr gather;
  if (sequence_parallel_) gather = GatherSequenceAsync(who, saved.x, tp_, &x_full);
  const int64_t rows = x_full.numel() / in_features_;
  const Tensor dy2 = dy.Reshape({rows, local_out_features()});

  Tensor dx_full = Tensor::Empty(x_shape, dy.dtype(), dy.device());
  Tensor dx_full2 = dx_full.Reshape({rows, in_features_});
  LocalLinearInputGrad(who, dy2, weight_.value, /*accumulate=*/false, &dx_full2);
  if (gather != nullptr) gather->Wait();

  // Each rank's dx is its output slice's share: the sum over TP is dx.
  Tensor dx = ReduceOverTensorParallelAsync(who, dx_full, sequence_parallel_, tp_, pending);
  LocalLinearWeightGrad(who, dy2, x_full.Reshape({rows, in_features_}), &weight_.grad);
  return dx;
}

Tensor ColumnParallelLinear::Backward(const Tensor& dy, const Saved& saved) {
  HandlePtr pending;
  Tensor dx = BackwardAsync(dy, saved, &pending);
  pending->Wait();
  return dx;
}

Tensor GatherLastDim(const Tensor& local, Communicator* tp) {
  MOE_CHECK(local.ndim() >= 1 && local.device() == Device::kCpu)
      << "GatherLastDim: needs a CPU tensor [..., columns], got " << local.Describe();
  if (tp->size() == 1) return local;
  const int64_t cols = local.dim(-1), rows = cols == 0 ? 0 : local.numel() / cols;
  const int64_t parts = tp->size();
  Tensor buffer = Tensor::Empty({parts, rows, cols}, local.dtype());
  tp->AllGather(buffer, local)->Wait();
  Shape shape = local.shape();
  shape.back() = cols * parts;
  Tensor full = Tensor::Empty(shape, local.dtype());
  const size_t elem = DTypeSize(local.dtype());
  const char* src = static_cast<const char*>(buffer.raw_data());
  char* dst = static_cast<char*>(full.raw_data());
  for (int64_t t = 0; t < parts; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst + (r * parts + t) * cols * elem, src + (t * rows + r) * cols * elem,
                  cols * elem);
    }
  }
  return full;
}

}  // namespace moe
