// The LM head fused with the cross-entropy loss over a vocab shard
// (core/layers/cross_entropy.h, split like Megatron-Core's
// vocab_parallel_cross_entropy). Rank r of the TP group holds rows
// [r V/TP, (r+1) V/TP) of the LM head W [V, H]; it computes its logits one
// vocab chunk at a time, folded into a running max and sum of exponentials,
// so no rank ever holds [tokens, V] or even [tokens, V/TP]. Two all-reduces
// of [tokens] numbers combine the shards: the max over TP, then the rescaled
// sums of exponentials together with the label's logit (nonzero only on the
// rank that holds the label). Every TP rank returns the same loss.
//
// hidden is the same on every TP rank, or under SP the sequence shard,
// gathered first (and the gathered copy is what Saved keeps: the loss's
// backward follows its forward at once, so re-gathering would only cost).
//
// The loss is a SUM over non-ignored tokens, as in CrossEntropy: the trainer
// scales by one over the token count of the whole global batch.
#ifndef MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_CROSS_ENTROPY_H_
#define MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_CROSS_ENTROPY_H_

#include <cstdint>

#include "core/layers/cross_entropy.h"
#include "parallel/communicator.h"

namespace moe {

class VocabParallelCrossEntropy {
 public:
  // What backward needs: the whole hidden [tokens, H], the labels [tokens]
  // and lse [tokens] (log-sum-exp of each token's logits over all of V).
  struct Saved {
    Tensor hidden, labels, lse;
  };
  using Result = CrossEntropy::Result;

  // `tp` (the GroupKind::kTp communicator) must outlive the layer.
  VocabParallelCrossEntropy(Communicator* tp, bool sequence_parallel, int64_t vocab_chunk = 4096);

  // hidden: [..., H], or [batch, seq/TP, H] under SP; weight: this rank's
  // rows [V/TP, H] of the LM head (a ColumnParallelLinear("lm_head", H, V)
  // holds exactly them); labels: kI32 shaped like the whole hidden without
  // its last dimension ([tokens] or [batch, seq]), < 0 ignored, >= V a fatal
  // error. CPU, kF32 or kF64.
  Result Forward(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                 Saved* saved) const;
  // scale = d(loss)/d(loss_sum). Returns dhidden like Forward's hidden (=):
  // summed over TP (all-reduce), or reduce-scattered to the sequence shard
  // under SP. *dweight [V/TP, H] += .
  Tensor Backward(double scale, const Tensor& weight, const Saved& saved, Tensor* dweight) const;

 private:
  Communicator* tp_;
  bool sequence_parallel_;
  int64_t vocab_chunk_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_TENSOR_PARALLEL_VOCAB_PARALLEL_CROSS_ENTROPY_H_
