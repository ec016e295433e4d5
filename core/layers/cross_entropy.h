// The LM head fused with the cross-entropy loss: logits = hidden W^T are
// produced one vocab chunk at a time and folded into a running log-sum-exp,
// so the [tokens, vocab] logits never exist (memory O(tokens x chunk)).
// Backward recomputes each chunk's logits from the saved hidden and lse.
//
// The loss is a SUM over non-ignored tokens: the trainer scales by one over
// the token count of the whole global batch, so that the parallel layout never
// changes the math.
#ifndef MOE_CORE_LAYERS_CROSS_ENTROPY_H_
#define MOE_CORE_LAYERS_CROSS_ENTROPY_H_

#include <cstdint>

#include "core/tensor.h"

namespace moe {

class CrossEntropy {
 public:
  // What backward needs: the LM head's input, the labels, and lse [tokens]
  // (log-sum-exp of each token's logits).
  struct Saved {
    Tensor hidden, labels, lse;
  };
  struct Result {
    double loss_sum;  // sum of per-token losses over non-ignored tokens
    int64_t tokens;   // how many tokens were not ignored
  };

  explicit CrossEntropy(int64_t vocab_chunk = 4096);

  // hidden: [tokens, H]; weight: [V, H] (the LM head, Hugging Face layout);
  // labels: kI32 [tokens], < 0 ignored, >= V a fatal error. CPU, kF32 or kF64.
  Result Forward(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                 Saved* saved) const;
  // scale = d(loss)/d(loss_sum), e.g. 1 / (non-ignored tokens of the global
  // batch). Returns dhidden (=); *dweight [V, H] += .
  Tensor Backward(double scale, const Tensor& weight, const Saved& saved, Tensor* dweight) const;

 private:
  int64_t vocab_chunk_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_CROSS_ENTROPY_H_
