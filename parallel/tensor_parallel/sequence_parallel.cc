#include "parallel/tensor_parallel/sequence_parallel.h"

#include <utility>

#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

// The layout of a [batch, seq, ...] tensor cut into TP sequence blocks of
// `block` elements each ([seq/TP, ...] of one sequence).
struct Blocks {
  int64_t batch;
  int64_t tp;
  int64_t block;
};

Blocks ShardBlocks(std::string_view who, const Tensor& shard, int tp) {
  MOE_CHECK(shard.defined() && shard.ndim() >= 2)
      << who << ": a sequence-parallel shard must be [batch, seq/TP, ...], got "
      << (shard.defined() ? shard.Describe() : std::string("an undefined tensor"));
  return {shard.dim(0), tp, shard.dim(0) == 0 ? 0 : shard.numel() / shard.dim(0)};
}

Blocks FullBlocks(std::string_view who, const Tensor& full, int tp) {
  SequenceShardLength(who, full, tp);
  return {full.dim(0), tp, full.dim(0) == 0 ? 0 : full.numel() / full.dim(0) / tp};
}

// Copies block (b, t) of `from` into `to`, where a tensor laid out
// [TP, batch, ...] ("rank major") holds it at (t * batch + b) and one laid out
// [batch, TP, ...] ("sequence order") at (b * TP + t).
void Interleave(const Blocks& k, const Tensor& from, bool from_rank_major, Tensor* to) {
  for (int64_t t = 0; t < k.tp; ++t) {
    for (int64_t b = 0; b < k.batch; ++b) {
      const int64_t rank_major = (t * k.batch + b) * k.block;
      const int64_t seq_order = (b * k.tp + t) * k.block;
      const int64_t src = from_rank_major ? rank_major : seq_order;
      const int64_t dst = from_rank_major ? seq_order : rank_major;
      to->View(dst, {k.block}).CopyFrom(from.View(src, {k.block}));
    }
  }
}

// An all-gather into a rank-major buffer, put into sequence order once it
// has completed.
class GatherHandle final : public Handle {
 public:
  GatherHandle(Tensor buffer, Tensor full, const Blocks& blocks, HandlePtr inner)
      : buffer_(std::move(buffer)),
        full_(std::move(full)),
        blocks_(blocks),
        inner_(std::move(inner)) {}
  void Wait() override {
    inner_->Wait();
    Finish();
  }
  bool Test() override {
    if (!inner_->Test()) return false;
    Finish();
    return true;
  }

 private:
  void Finish() {
    if (!buffer_.defined()) return;
    Interleave(blocks_, buffer_, /*from_rank_major=*/true, &full_);
    buffer_ = Tensor();
  }

  // Declared before inner_, so destroyed after it has waited.
  Tensor buffer_;
  Tensor full_;
  Blocks blocks_;
  HandlePtr inner_;
};

}  // namespace

int64_t SequenceShardLength(std::string_view who, const Tensor& full, int tp_size) {
  MOE_CHECK(full.defined() && full.ndim() >= 2)
      << who << ": sequence parallelism needs [batch, seq, ...] activations, got "
      << (full.defined() ? full.Describe() : std::string("an undefined tensor"));
  MOE_CHECK(full.dim(1) % tp_size == 0)
      << who << ": sequence parallelism splits the sequence over the " << tp_size
      << " tensor-parallel ranks, but the sequence length " << full.dim(1) << " of "
      << full.Describe() << " is not divisible by " << tp_size;
  return full.dim(1) / tp_size;
}

HandlePtr GatherSequenceAsync(std::string_view who, const Tensor& shard, Communicator* tp,
                              Tensor* full) {
  const Blocks k = ShardBlocks(who, shard, tp->size());
  Shape shape = shard.shape();
  shape[1] *= tp->size();
  if (tp->size() == 1) {
    *full = shard;
    return std::make_unique<CompletedHandle>();
  }
  *full = Tensor::Empty(shape, shard.dtype(), shard.device());
  // One sequence: the rank-major blocks are already in sequence order.
  if (k.batch == 1) return KeepAlive(tp->AllGather(*full, shard), {shard});
  Tensor buffer = Tensor::Empty(shape, shard.dtype(), shard.device());
  HandlePtr inner = KeepAlive(tp->AllGather(buffer, shard), {shard});
  return std::make_unique<GatherHandle>(std::move(buffer), *full, k, std::move(inner));
}

Tensor GatherSequence(std::string_view who, const Tensor& shard, Communicator* tp) {
  Tensor full;
  GatherSequenceAsync(who, shard, tp, &full)->Wait();
  return full;
}

HandlePtr ReduceScatterSequenceAsync(std::string_view who, const Tensor& partial, Communicator* tp,
                                     Tensor* shard) {
  const Blocks k = FullBlocks(who, partial, tp->size());
  if (tp->size() == 1) {
    *shard = partial;
    return std::make_unique<CompletedHandle>();
  }
  Shape shape = partial.shape();
  shape[1] /= tp->size();
  *shard = Tensor::Empty(shape, partial.dtype(), partial.device());
  Tensor send = partial;
  if (k.batch > 1) {
    send = Tensor::Empty(partial.shape(), partial.dtype(), partial.device());
    Interleave(k, partial, /*from_rank_major=*/false, &send);
  }
  return KeepAlive(tp->ReduceScatter(*shard, send), {send});
}

Tensor ReduceOverTensorParallelAsync(std::string_view who, const Tensor& partial,
                                     bool sequence_parallel, Communicator* tp, HandlePtr* pending) {
  if (sequence_parallel) {
    Tensor shard;
    *pending = ReduceScatterSequenceAsync(who, partial, tp, &shard);
    return shard;
  }
  *pending =
      tp->size() > 1 ? tp->AllReduce(partial, ReduceOp::kSum) : std::make_unique<CompletedHandle>();
  return partial;
}

Tensor ReduceScatterSequence(std::string_view who, const Tensor& partial, Communicator* tp) {
  Tensor shard;
  ReduceScatterSequenceAsync(who, partial, tp, &shard)->Wait();
  return shard;
}

Tensor SliceSequence(std::string_view who, const Tensor& full, Communicator* tp) {
  const Blocks k = FullBlocks(who, full, tp->size());
  Shape shape = full.shape();
  shape[1] /= tp->size();
  Tensor shard = Tensor::Empty(shape, full.dtype(), full.device());
  for (int64_t b = 0; b < k.batch; ++b) {
    shard.View(b * k.block, {k.block})
        .CopyFrom(full.View((b * k.tp + tp->rank()) * k.block, {k.block}));
  }
  return shard;
}

}  // namespace moe
