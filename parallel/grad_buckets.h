// GradBuckets: the data-parallel gradient reduction. The model's parameter
// gradients are packed into flat fp32 buckets of about bucket_bytes each and
// every bucket is reduced over the DP communicator with one asynchronous
// collective.
//
// Layout. Parameters are taken in reverse Parameters() order (the order in
// which backward finishes them) and laid out back to back; a bucket is closed
// once it holds bucket_bytes (a parameter is never split across buckets). A
// bucket's flat size is padded with zeros to a multiple of DP, so that
// rank r owns the contiguous chunk [r * c, (r + 1) * c) of every bucket,
// c = padded / DP: Megatron-Core's layout. With one bucket that is a
// contiguous 1/DP of the whole flat parameter space.
//
// Two modes:
//   kAllReduce      every rank ends with the summed gradient of every
//                   parameter, copied back into Parameter::grad (plain DP).
//   kReduceScatter  every rank ends with the summed gradient of its own chunk
//                   of each bucket only (Shard()), for the distributed
//                   optimizer; Parameter::grad is left as backward wrote it.
//
// Gradients are SUMMED over ranks, never averaged: the trainer's loss scale
// 1 / (label tokens of the global batch) already makes the sum the mean.
//
// When it runs. Either all at once after backward: Start() packs each
// bucket and issues its collective (bucket b's reduction runs while b+1 is
// packed), Finish() waits. Or during backward, overlapped with it: the
// model's backward hook calls MarkReady(p) once p's gradient is final (its
// last micro-batch), and a bucket is packed and issued as soon as all its
// parameters are ready and every earlier bucket has been issued (so every
// rank issues the same collectives in the same order); Finish() issues what
// is left and waits.
#ifndef MOE_PARALLEL_GRAD_BUCKETS_H_
#define MOE_PARALLEL_GRAD_BUCKETS_H_

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/layers/parameter.h"
#include "parallel/communicator.h"

namespace moe {

class GradBuckets {
 public:
  enum class Mode { kAllReduce, kReduceScatter };

  // One parameter's place in a bucket's flat buffer.
  struct Slot {
    Parameter* param = nullptr;
    int64_t offset = 0;  // element offset in the bucket
  };
  struct Bucket {
    std::vector<Slot> slots;  // in reverse Parameters() order
    int64_t numel = 0;        // sum of the parameters' sizes
    int64_t padded = 0;       // numel rounded up to a multiple of DP
    Tensor flat;              // f32[padded]: packed grads (summed, in kAllReduce)
    Tensor shard;             // f32[padded / DP]: this rank's chunk, summed (kReduceScatter)
  };

  // `params` in Parameters() order; CPU kF32 values and grads; they and `dp`
  // must outlive this object. bucket_bytes > 0.
  GradBuckets(std::vector<Parameter*> params, Communicator* dp, int64_t bucket_bytes, Mode mode);
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  // Packs every bucket and issues its reduction (see the header comment).
  void Start();
  // p's gradient is final: issue its bucket once complete (header comment).
  // p must be one of the parameters; marking one twice before Finish dies.
  void MarkReady(const Parameter* p);
  // Buckets issued so far in this reduction (for tests and overlap reports).
  size_t issued() const { return handles_.size(); }
  // Waits for every reduction; in kAllReduce copies the sums back into the grads.
  void Finish();
  // The whole reduction: every bucket not yet issued by MarkReady, then wait.
  void Reduce() { Finish(); }

  // Sum of squares, in double, of the elements this rank owns: its chunk of
  // every bucket, after Finish(). Summed over the DP group it is the squared
  // norm of the whole reduced gradient, each element counted once.
  double OwnedSquaredNorm() const;

  Mode mode() const { return mode_; }
  Communicator* comm() const { return dp_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  std::vector<Bucket>& buckets() { return buckets_; }
  // This rank's chunk of bucket b: [begin, begin + size) in its flat buffer.
  int64_t ChunkBegin(size_t b) const { return dp_->rank() * ChunkSize(b); }
  int64_t ChunkSize(size_t b) const { return buckets_[b].padded / dp_->size(); }
  int64_t num_elements() const { return num_elements_; }  // unpadded, all buckets

 private:
  std::vector<Parameter*> params_;
  Communicator* dp_;
  Mode mode_;
  std::vector<Bucket> buckets_;
  // Packs bucket b and issues its collective.
  void Issue(size_t b);

  std::vector<HandlePtr> handles_;  // of buckets [0, handles_.size())
  int64_t num_elements_ = 0;
  std::unordered_map<const Parameter*, size_t> bucket_of_;
  std::vector<size_t> ready_;  // per bucket: parameters marked ready
  std::unordered_set<const Parameter*> marked_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_GRAD_BUCKETS_H_
