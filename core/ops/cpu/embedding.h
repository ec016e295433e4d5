// Token embedding lookup on the CPU.
//   ids: [n] (int32, each in [0, vocab))   table, dtable: [vocab, dim]   out, dout: [n, dim]
// Gradient rule: dtable += (rows of repeated ids accumulate). Backward is
// deterministic without float atomics: each id's rows are added in token
// order, so the bits do not depend on the thread count.
// Ids are bounds-checked by the layer before these are called.
#ifndef MOE_CORE_OPS_CPU_EMBEDDING_H_
#define MOE_CORE_OPS_CPU_EMBEDDING_H_

#include <cstdint>

namespace moe::cpu {

template <typename T>
void EmbeddingForward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t dim);

template <typename T>
void EmbeddingBackward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                       int64_t dim);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_EMBEDDING_H_
