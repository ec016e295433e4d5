#include "parallel/distributed_optimizer.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <unordered_set>
#include <utility>

namespace moe {

DistributedOptimizer::DistributedOptimizer(std::vector<Parameter*> params, Communicator* dp,
                                           AdamW::Options options, int64_t bucket_bytes)
    : params_(params),
      buckets_(std::move(params), dp, bucket_bytes, GradBuckets::Mode::kReduceScatter) {
  const std::vector<GradBuckets::Bucket>& buckets = buckets_.buckets();
  size_t num_pieces = 0;
  for (const auto& bucket : buckets) num_pieces += bucket.slots.size();
  pieces_.reserve(num_pieces);  // piece_ptrs_ point into it
  auto no_decay = std::make_shared<std::unordered_set<const Parameter*>>();
  for (size_t b = 0; b < buckets.size(); ++b) {
    const int64_t begin = buckets_.ChunkBegin(b);
    const int64_t size = buckets_.ChunkSize(b);
    master_.push_back(Tensor::Zeros({size}, DType::kF32));
    shard_elements_ += size;
    for (const GradBuckets::Slot& slot : buckets[b].slots) {
      const int64_t lo = std::max(begin, slot.offset);
      const int64_t hi = std::min(begin + size, slot.offset + slot.param->value.numel());
      if (lo >= hi) continue;
      std::memcpy(master_[b].data<float>() + (lo - begin),
                  slot.param->value.data<float>() + (lo - slot.offset),
                  static_cast<size_t>(hi - lo) * sizeof(float));
      Parameter piece;
      piece.name = slot.param->name;
      piece.value = master_[b].View(lo - begin, {hi - lo});
      piece.grad = buckets[b].shard.View(lo - begin, {hi - lo});
      pieces_.push_back(std::move(piece));
      piece_sources_.emplace_back(slot.param, lo - slot.offset);
      if (options.no_decay && options.no_decay(*slot.param)) no_decay->insert(&pieces_.back());
    }
  }
  for (Parameter& piece : pieces_) piece_ptrs_.push_back(&piece);
  // The decision was taken above on the whole parameter; the piece only looks it up.
  options.no_decay = [no_decay](const Parameter& piece) { return no_decay->count(&piece) > 0; };
  adam_ = std::make_unique<AdamW>(piece_ptrs_, std::move(options));
}

double DistributedOptimizer::SquaredGradNorm() const {
  Tensor sum = Tensor::Empty({1}, DType::kF64);
  sum.data<double>()[0] = buckets_.OwnedSquaredNorm();
  buckets_.comm()->AllReduceSync(sum, ReduceOp::kSum);
  return sum.data<double>()[0];
}

void DistributedOptimizer::Step(double lr) {
  adam_->Step(lr);  // zeroes the chunks' grads
  std::vector<GradBuckets::Bucket>& buckets = buckets_.buckets();
  std::vector<HandlePtr> gathers;
  gathers.reserve(buckets.size());
  for (size_t b = 0; b < buckets.size(); ++b) {
    gathers.push_back(buckets_.comm()->AllGather(buckets[b].flat, master_[b]));
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    gathers[b]->Wait();
    const float* flat = buckets[b].flat.data<float>();
    for (const GradBuckets::Slot& slot : buckets[b].slots) {
      std::memcpy(slot.param->value.data<float>(), flat + slot.offset,
                  static_cast<size_t>(slot.param->value.numel()) * sizeof(float));
      slot.param->grad.SetZero();
    }
  }
}

std::vector<DistributedOptimizer::ShardPiece> DistributedOptimizer::ShardPieces() {
  std::vector<ShardPiece> pieces;
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const AdamW::State& state = adam_->state(i);
    pieces.push_back(ShardPiece{piece_sources_[i].first, piece_sources_[i].second, pieces_[i].value,
                                state.exp_avg, state.exp_avg_sq});
  }
  return pieces;
}

void DistributedOptimizer::CopyMastersFromParams() {
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const auto& [param, offset] = piece_sources_[i];
    std::memcpy(pieces_[i].value.data<float>(), param->value.data<float>() + offset,
                static_cast<size_t>(pieces_[i].value.numel()) * sizeof(float));
  }
}

void DistributedOptimizer::ZeroGrad() {
  for (Parameter* piece : piece_ptrs_) piece->grad.SetZero();
  for (Parameter* p : params_) p->grad.SetZero();
}

}  // namespace moe
