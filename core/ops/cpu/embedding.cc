#include "core/ops/cpu/embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace moe::cpu {

template <typename T>
void EmbeddingForward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(out + t * dim, table + static_cast<int64_t>(ids[t]) * dim, sizeof(T) * dim);
  }
}

template <typename T>
void EmbeddingBackward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                       int64_t dim) {
  if (n == 0 || dim == 0) return;
  // Repeated ids make this a scatter-add. To stay race-free without float
  // atomics, tokens are grouped by id with a stable counting sort; each
  // (id, column block) is then owned by exactly one thread, which adds that
  // id's rows in token order. The sum order is therefore the sequential one,
  // whatever the thread count, so the result is bitwise reproducible.
  std::vector<int64_t> start(static_cast<size_t>(vocab) + 1, 0);
  for (int64_t t = 0; t < n; ++t) ++start[ids[t] + 1];
  for (int64_t v = 0; v < vocab; ++v) start[v + 1] += start[v];
  std::vector<int64_t> order(n);
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < n; ++t) order[next[ids[t]]++] = t;
  }
  // Distinct ids, each with its [begin, end) range in `order`.
  std::vector<int64_t> segments;
  for (int64_t v = 0; v < vocab; ++v) {
    if (start[v + 1] > start[v]) segments.push_back(v);
  }
  // Column blocks split a very frequent id (a padding token, say) across
  // threads too; 256 elements keep each block a whole number of cache lines.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (dim + kBlock - 1) / kBlock;
  const int64_t items = static_cast<int64_t>(segments.size()) * blocks;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t w = 0; w < items; ++w) {
    const int64_t v = segments[w / blocks];
    const int64_t c0 = (w % blocks) * kBlock;
    const int64_t width = std::min(kBlock, dim - c0);
    T* dst = dtable + v * dim + c0;
    for (int64_t j = start[v]; j < start[v + 1]; ++j) {
      const T* src = dout + order[j] * dim + c0;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) dst[i] += src[i];
    }
  }
}

template void EmbeddingForward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void EmbeddingForward<double>(double*, const int32_t*, const double*, int64_t, int64_t);
template void EmbeddingBackward<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                       int64_t);
template void EmbeddingBackward<double>(double*, const double*, const int32_t*, int64_t, int64_t,
                                        int64_t);

}  // namespace moe::cpu
