// DistributedOptimizer: ZeRO-1 AdamW over the data-parallel group
// (Megatron-Core's --use_distributed_optimizer).
//
// The flat parameter space is GradBuckets' (kReduceScatter): rank r owns the
// contiguous chunk r of every bucket. It keeps, for its chunks only, an fp32
// master copy of the weights and AdamW's exp_avg and exp_avg_sq: optimizer
// state per rank is 1/DP of AdamW's. A step is
//
//   ReduceGradients()       reduce-scatter: the summed grads of the own chunks
//   SquaredGradNorm()       all-reduce of the owned sums of squares
//   ClipGrads(coeff rule)   on the own chunks
//   Step(lr)                AdamW on the own chunks, then all-gather the
//                           updated weights into every rank's parameters
//
// The update is core/optim/adamw's, run by an AdamW over "piece" Parameters:
// one per (parameter, chunk) overlap, whose value and grad are views of the
// master and grad chunks. A chunk may cut a parameter anywhere; a piece gets
// the weight-decay decision of the parameter it comes from (its own shape is
// always 1-D, which DefaultNoDecay would read as "no decay").
//
// The all-gather lands in the bucket's flat buffer, free again once the
// reduce-scatter has delivered the chunk, so the gather needs no extra memory.
#ifndef MOE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_
#define MOE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/optim/adamw.h"
#include "parallel/grad_buckets.h"

namespace moe {

class DistributedOptimizer {
 public:
  // `params` in Parameters() order, CPU kF32, identical on every rank of `dp`
  // (the master chunks are copied from them now). They and `dp` must outlive
  // the optimizer.
  DistributedOptimizer(std::vector<Parameter*> params, Communicator* dp, AdamW::Options options,
                       int64_t bucket_bytes);
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // Reduce-scatters the parameters' grads into the own chunks (blocking; see
  // GradBuckets for the overlap it has).
  void ReduceGradients() { buckets_.Reduce(); }
  // The squared global norm of the reduced gradient, the same on every rank.
  double SquaredGradNorm() const;
  // This rank's share of it (its own chunks), before the all-reduce: for a
  // caller that sums several groups' shares in one all-reduce.
  double OwnedSquaredGradNorm() const { return buckets_.OwnedSquaredNorm(); }
  // The pieces' grads are the own chunks: pass these to ClipGradNorm.
  const std::vector<Parameter*>& shard_params() { return piece_ptrs_; }

  // AdamW on the own chunks, then all-gathers the weights into the
  // parameters; zeroes the chunks' and the parameters' grads.
  void Step(double lr);
  // For a skipped step: zeroes every grad, changes nothing else.
  void ZeroGrad();

  int64_t step() const { return adam_->step(); }
  void set_step(int64_t step) { adam_->set_step(step); }  // restoring a checkpoint

  // For checkpoints: one (parameter, own chunk) overlap, the elements
  // [offset, offset + numel) of `param`'s value in row-major order, and this
  // rank's state for them (views: writing them restores the state).
  struct ShardPiece {
    const Parameter* param = nullptr;
    int64_t offset = 0;
    Tensor master;  // f32[numel]
    Tensor exp_avg;
    Tensor exp_avg_sq;
  };
  std::vector<ShardPiece> ShardPieces();
  // Copies the parameters' values into the masters: after something other
  // than Step() wrote the parameters (a checkpoint or Hugging Face load).
  void CopyMastersFromParams();
  const GradBuckets& buckets() const { return buckets_; }
  // For MarkReady from the model's backward (GradBuckets' overlap).
  GradBuckets& mutable_buckets() { return buckets_; }
  // Elements of optimizer state per rank (master + exp_avg + exp_avg_sq).
  int64_t shard_elements() const { return shard_elements_; }

 private:
  std::vector<Parameter*> params_;
  GradBuckets buckets_;
  std::vector<Tensor> master_;  // per bucket: f32[chunk], the own chunk's weights
  std::vector<Parameter> pieces_;
  std::vector<Parameter*> piece_ptrs_;
  std::vector<std::pair<const Parameter*, int64_t>> piece_sources_;  // (param, offset) per piece
  std::unique_ptr<AdamW> adam_;
  int64_t shard_elements_ = 0;
};

}  // namespace moe

#endif  // MOE_PARALLEL_DISTRIBUTED_OPTIMIZER_H_
