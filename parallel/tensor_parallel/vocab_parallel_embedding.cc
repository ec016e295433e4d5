#include "parallel/tensor_parallel/vocab_parallel_embedding.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "parallel/tensor_parallel/sequence_parallel.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

Parameter VocabShard(std::string name, int64_t vocab, int64_t dim, Communicator* tp, DType dtype,
                     Device device) {
  name += ".weight";
  MOE_CHECK(tp != nullptr) << name << ": needs the tensor-parallel communicator, got null";
  MOE_CHECK(vocab > 0 && dim > 0) << name << ": vocab and dim must be positive, got " << vocab
                                  << " and " << dim;
  MOE_CHECK(vocab <= std::numeric_limits<int32_t>::max())
      << name << ": vocab " << vocab << " exceeds the int32 id range";
  MOE_CHECK(vocab % tp->size() == 0)
      << name << ": vocab " << vocab << " is not divisible by the tensor-parallel size "
      << tp->size() << " (each TP rank holds an equal slice of the rows); pad the vocabulary to a "
      << "multiple of " << tp->size();
  MOE_CHECK(device == Device::kCpu && (dtype == DType::kF32 || dtype == DType::kF64))
      << name << ": the vocab-parallel embedding is CPU kF32 or kF64 for now, got "
      << DTypeName(dtype) << " on " << DeviceName(device);
  const int64_t local = vocab / tp->size();
  return ShardedParameter(std::move(name), {vocab, dim}, /*dim=*/0, tp->rank() * local, local,
                          dtype, device);
}

// out[t] = table[ids[t] - begin] for ids in [begin, end), zero otherwise.
template <typename T>
void LookupCpu(T* out, const int32_t* ids, const T* table, int64_t n, int64_t begin, int64_t end,
               int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    T* row = out + t * dim;
    if (ids[t] >= begin && ids[t] < end) {
      std::memcpy(row, table + (ids[t] - begin) * dim, sizeof(T) * dim);
    } else {
      std::fill_n(row, dim, T(0));
    }
  }
}

// dtable[ids[t] - begin] += dout[t] for ids in [begin, end). Threads own
// column blocks and add tokens in order: the same bits for any thread count.
template <typename T>
void ScatterAddCpu(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t begin,
                   int64_t end, int64_t dim) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (dim + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlock, width = std::min(kBlock, dim - c0);
    for (int64_t t = 0; t < n; ++t) {
      if (ids[t] < begin || ids[t] >= end) continue;
      T* dst = dtable + (ids[t] - begin) * dim + c0;
      const T* src = dout + t * dim + c0;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) dst[i] += src[i];
    }
  }
}

}  // namespace

VocabParallelEmbedding::VocabParallelEmbedding(std::string name, int64_t vocab, int64_t dim,
                                               Communicator* tp, bool sequence_parallel,
                                               DType dtype, Device device)
    : vocab_(vocab),
      dim_(dim),
      tp_(tp),
      sequence_parallel_(sequence_parallel),
      weight_(VocabShard(std::move(name), vocab, dim, tp, dtype, device)) {}

Tensor VocabParallelEmbedding::Forward(const Tensor& ids, Saved* saved) const {
  const std::string& who = weight_.name;
  MOE_CHECK(ids.dtype() == DType::kI32 && ids.device() == Device::kCpu)
      << who << ": ids must be i32 on cpu, got " << ids.Describe();
  if (sequence_parallel_) {
    MOE_CHECK(ids.ndim() == 2) << who
                               << ": under sequence parallelism ids must be [batch, seq], got "
                               << ids.Describe();
    SequenceShardLength(who, ids, tp_->size());
  }
  const int64_t n = ids.numel();
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < n; ++t) {
    MOE_CHECK(id[t] >= 0 && id[t] < vocab_)
        << who << ": token id " << id[t] << " at flat position " << t << " of ids "
        << ids.ShapeString() << " is outside the vocabulary [0, " << vocab_ << ")";
  }
  Shape out_shape = ids.shape();
  out_shape.push_back(dim_);
  Tensor partial = Tensor::Empty(out_shape, weight_.value.dtype());
  const int64_t begin = vocab_begin(), end = begin + local_vocab();
  if (partial.dtype() == DType::kF64) {
    LookupCpu(partial.data<double>(), id, weight_.value.data<double>(), n, begin, end, dim_);
  } else {
    LookupCpu(partial.data<float>(), id, weight_.value.data<float>(), n, begin, end, dim_);
  }
  saved->ids = ids;
  if (sequence_parallel_) return ReduceScatterSequence(who, partial, tp_);
  if (tp_->size() > 1) tp_->AllReduceSync(partial, ReduceOp::kSum);
  return partial;
}

void VocabParallelEmbedding::Backward(const Tensor& dout, const Saved& saved) {
  const std::string& who = weight_.name;
  const Tensor& ids = saved.ids;
  MOE_CHECK(ids.defined()) << who << ": Backward needs the Saved of a Forward call";
  Shape out_shape = ids.shape();
  out_shape.push_back(dim_);
  if (sequence_parallel_) out_shape[1] /= tp_->size();
  MOE_CHECK(dout.shape() == out_shape && dout.dtype() == weight_.grad.dtype() &&
            dout.device() == Device::kCpu)
      << who << ": dout must be " << DTypeName(weight_.grad.dtype()) << ShapeToString(out_shape)
      << " on cpu, got " << dout.Describe();
  const Tensor dfull = sequence_parallel_ ? GatherSequence(who, dout, tp_) : dout;
  const int64_t begin = vocab_begin(), end = begin + local_vocab();
  if (dfull.dtype() == DType::kF64) {
    ScatterAddCpu(weight_.grad.data<double>(), dfull.data<double>(), ids.data<int32_t>(),
                  ids.numel(), begin, end, dim_);
  } else {
    ScatterAddCpu(weight_.grad.data<float>(), dfull.data<float>(), ids.data<int32_t>(), ids.numel(),
                  begin, end, dim_);
  }
}

}  // namespace moe
