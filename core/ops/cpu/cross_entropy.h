// Cross-entropy over logits on the CPU, one row per token.
//   logits, dlogits: [rows, vocab]   labels: [rows] (int32; a label < 0 is ignored)
//   losses: [rows] (lse - logit[label]; 0 for ignored rows)   lse: [rows] (saved)
// The log-sum-exp is computed in one pass over vocab chunks with a running
// max (online softmax), accumulating in double.
// Backward: dlogits = scale * (softmax(logits) - onehot(label)), rows with an
// ignored label get zeros. `scale` is d(loss)/d(loss_row), e.g. 1 / tokens of
// the global batch.
#ifndef MOE_CORE_OPS_CPU_CROSS_ENTROPY_H_
#define MOE_CORE_OPS_CPU_CROSS_ENTROPY_H_

#include <cstdint>

namespace moe::cpu {

template <typename T>
void CrossEntropyForward(T* losses, T* lse, const T* logits, const int32_t* labels, int64_t rows,
                         int64_t vocab);

template <typename T>
void CrossEntropyBackward(T* dlogits, const T* logits, const T* lse, const int32_t* labels,
                          double scale, int64_t rows, int64_t vocab);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_CROSS_ENTROPY_H_
