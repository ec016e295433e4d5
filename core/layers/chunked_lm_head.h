// The chunked LM-head + softmax kernels shared by CrossEntropy (the whole
// vocab on one rank) and VocabParallelCrossEntropy (a slice of the vocab per
// tensor-parallel rank): logits = hidden W^T are produced `chunk` vocab rows
// at a time, so the [tokens, vocab] logits never exist.
//
// Both take this rank's rows of the LM head, weight [local_vocab, H], whose
// global vocab ids start at vocab_begin (0 without tensor parallelism), and
// hidden [tokens, H]. Labels are global ids; < 0 means ignored.
#ifndef MOE_CORE_LAYERS_CHUNKED_LM_HEAD_H_
#define MOE_CORE_LAYERS_CHUNKED_LM_HEAD_H_

#include <cstdint>

#include "core/tensor.h"

namespace moe::chunked_lm_head {

// Per token r, over this rank's vocab rows, folded into the running values
// (start from m = -inf, s = 0): m[r] = max logit, s[r] = sum exp(logit -
// m[r]), and label_logit[r] = the label's logit when the label is one of
// these rows (left as it was otherwise). In double, so that a long vocab
// loses no digits in fp32. T is float or double, hidden's dtype.
template <typename T>
void Statistics(const Tensor& hidden, const Tensor& weight, const int32_t* label,
                int64_t vocab_begin, int64_t chunk, double* m, double* s, double* label_logit);

// dlogits = scale * (softmax - onehot(label)), zero for ignored tokens, with
// softmax = exp(logit - lse[r]) from the saved log-sum-exp; then
// dhidden [tokens, H] = dlogits W (=) and dweight [local_vocab, H] +=
// dlogits^T hidden.
template <typename T>
void Backward(double scale, const Tensor& hidden, const Tensor& weight, const int32_t* label,
              const T* lse, int64_t vocab_begin, int64_t chunk, Tensor* dhidden, Tensor* dweight);

}  // namespace moe::chunked_lm_head

#endif  // MOE_CORE_LAYERS_CHUNKED_LM_HEAD_H_
