#include "parallel/grad_buckets.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace moe {

GradBuckets::GradBuckets(std::vector<Parameter*> params, Communicator* dp, int64_t bucket_bytes,
                         Mode mode)
    : params_(std::move(params)), dp_(dp), mode_(mode) {
  MOE_CHECK(dp_ != nullptr) << "GradBuckets: null DP communicator";
  MOE_CHECK(bucket_bytes > 0) << "GradBuckets: bucket_bytes must be > 0, got " << bucket_bytes;
  const int64_t bucket_elements = std::max<int64_t>(1, bucket_bytes / 4);
  const int64_t dp_size = dp_->size();
  Bucket current;
  const auto close = [&] {
    if (current.slots.empty()) return;
    current.padded = (current.numel + dp_size - 1) / dp_size * dp_size;
    current.flat = Tensor::Zeros({current.padded}, DType::kF32);
    if (mode_ == Mode::kReduceScatter) {
      current.shard = Tensor::Zeros({current.padded / dp_size}, DType::kF32);
    }
    buckets_.push_back(std::move(current));
    current = Bucket();
  };
  for (auto it = params_.rbegin(); it != params_.rend(); ++it) {
    Parameter* p = *it;
    MOE_CHECK(p != nullptr) << "GradBuckets: null parameter";
    MOE_CHECK(p->value.dtype() == DType::kF32 && p->grad.dtype() == DType::kF32 &&
              p->value.device() == Device::kCpu && p->grad.device() == Device::kCpu &&
              p->grad.numel() == p->value.numel())
        << "GradBuckets: " << p->name << " must be a CPU f32 parameter with an f32 grad, got "
        << p->value.Describe() << " / " << p->grad.Describe()
        << "; bf16 and CUDA buckets come with the CUDA data-parallel path";
    current.slots.push_back({p, current.numel});
    current.numel += p->value.numel();
    num_elements_ += p->value.numel();
    if (current.numel * 4 >= bucket_bytes || current.numel >= bucket_elements) close();
  }
  close();
  ready_.assign(buckets_.size(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    for (const Slot& slot : buckets_[b].slots) bucket_of_[slot.param] = b;
  }
}

void GradBuckets::Issue(size_t b) {
  Bucket& bucket = buckets_[b];
  float* flat = bucket.flat.data<float>();
  for (const Slot& slot : bucket.slots) {
    std::memcpy(flat + slot.offset, slot.param->grad.data<float>(),
                static_cast<size_t>(slot.param->grad.numel()) * sizeof(float));
  }
  // The padding stays zero: it is never written.
  handles_.push_back(mode_ == Mode::kAllReduce ? dp_->AllReduce(bucket.flat, ReduceOp::kSum)
                                               : dp_->ReduceScatter(bucket.shard, bucket.flat));
}

void GradBuckets::Start() {
  MOE_CHECK(handles_.empty()) << "GradBuckets::Start: the previous reduction was not finished";
  for (size_t b = 0; b < buckets_.size(); ++b) Issue(b);
}

void GradBuckets::MarkReady(const Parameter* p) {
  const auto it = bucket_of_.find(p);
  MOE_CHECK(it != bucket_of_.end())
      << "GradBuckets::MarkReady: " << (p ? p->name : "null") << " is not in these buckets";
  MOE_CHECK(marked_.insert(p).second)
      << "GradBuckets::MarkReady: " << p->name << " marked twice in one reduction";
  ++ready_[it->second];
  // Issue in bucket order only, so that every rank issues the same sequence.
  while (handles_.size() < buckets_.size() &&
         ready_[handles_.size()] == buckets_[handles_.size()].slots.size()) {
    Issue(handles_.size());
  }
}

void GradBuckets::Finish() {
  while (handles_.size() < buckets_.size()) Issue(handles_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    handles_[b]->Wait();
    if (mode_ != Mode::kAllReduce) continue;
    const float* flat = buckets_[b].flat.data<float>();
    for (const Slot& slot : buckets_[b].slots) {
      std::memcpy(slot.param->grad.data<float>(), flat + slot.offset,
                  static_cast<size_t>(slot.param->grad.numel()) * sizeof(float));
    }
  }
  handles_.clear();
  std::fill(ready_.begin(), ready_.end(), 0);
  marked_.clear();
}

double GradBuckets::OwnedSquaredNorm() const {
  MOE_CHECK(handles_.empty()) << "GradBuckets::OwnedSquaredNorm: call Finish() first";
  double total = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const int64_t size = ChunkSize(b);
    const float* x = mode_ == Mode::kAllReduce ? buckets_[b].flat.data<float>() + ChunkBegin(b)
                                               : buckets_[b].shard.data<float>();
    for (int64_t i = 0; i < size; ++i) total += static_cast<double>(x[i]) * x[i];
  }
  return total;
}

}  // namespace moe
