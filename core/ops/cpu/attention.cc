#include "core/ops/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/ops/cpu/fast_exp.h"
#include "core/ops/cpu/gemm.h"

namespace moe::cpu {
namespace {

// Strided addressing of the [batch, seq, heads, head_dim] layouts: a block of
// rows of one head is a matrix with row stride heads * head_dim, which Gemm
// takes as its leading dimension, so no block is ever copied out.
struct Layout {
  int64_t seq, q_heads, kv_heads, head_dim;
  int64_t q_stride() const { return q_heads * head_dim; }
  int64_t kv_stride() const { return kv_heads * head_dim; }
  int64_t QOffset(int64_t b, int64_t s, int64_t h) const {
    return ((b * seq + s) * q_heads + h) * head_dim;
  }
  int64_t KvOffset(int64_t b, int64_t s, int64_t g) const {
    return ((b * seq + s) * kv_heads + g) * head_dim;
  }
  // lse and delta are [batch, q_heads, seq].
  int64_t RowOffset(int64_t b, int64_t h, int64_t s) const { return (b * q_heads + h) * seq + s; }
};

void CheckShape(const AttentionShape& s) {
  MOE_CHECK(s.batch >= 0 && s.seq >= 0 && s.head_dim > 0 && s.kv_heads > 0 && s.q_heads > 0)
      << "attention kernel: bad sizes batch=" << s.batch << " seq=" << s.seq
      << " q_heads=" << s.q_heads << " kv_heads=" << s.kv_heads << " head_dim=" << s.head_dim;
  MOE_CHECK(s.q_heads % s.kv_heads == 0) << "attention kernel: q_heads " << s.q_heads
                                         << " is not a multiple of kv_heads " << s.kv_heads;
  MOE_CHECK(s.block > 0) << "attention kernel: block must be positive, got " << s.block;
}

// Keys of block [j0, j0 + cols) that query i0 + r may see (causal): all of an
// earlier block, a prefix of the diagonal one.
inline int64_t VisibleKeys(int64_t i0, int64_t r, int64_t j0, int64_t cols) {
  return std::clamp<int64_t>(i0 + r - j0 + 1, 0, cols);
}

// p[r, c] = exp(s[r, c] - lse[r]) over visible keys, 0 over masked ones.
// Recomputes the forward probabilities from the saved log-sum-exp.
template <typename T>
void Probabilities(T* p, int64_t ldp, const T* lse, int64_t rows, int64_t cols, int64_t i0,
                   int64_t j0) {
  for (int64_t r = 0; r < rows; ++r) {
    T* pr = p + r * ldp;
    const int64_t visible = VisibleKeys(i0, r, j0, cols);
    const T l = lse[r];
#pragma omp simd
    for (int64_t c = 0; c < visible; ++c) pr[c] = FastExp(pr[c] - l);
    for (int64_t c = visible; c < cols; ++c) pr[c] = T(0);
  }
}

// ds = p * (dp - delta), in place in dp.
template <typename T>
void ScoreGradient(T* dp, const T* p, int64_t ld, const T* delta, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const T d = delta[r];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) dp[r * ld + c] = p[r * ld + c] * (dp[r * ld + c] - d);
  }
}

}  // namespace

template <typename T>
void AttentionForward(T* out, T* lse, const T* q, const T* k, const T* v,
                      const AttentionShape& shape) {
  CheckShape(shape);
  const Layout idx{shape.seq, shape.q_heads, shape.kv_heads, shape.head_dim};
  const int64_t hd = shape.head_dim;
  // A block longer than the sequence only wastes scratch.
  const int64_t bs = std::max<int64_t>(1, std::min(shape.block, shape.seq));
  const int64_t blocks = (shape.seq + bs - 1) / bs;
  const int64_t group = shape.q_heads / shape.kv_heads;
  const T scale = static_cast<T>(shape.scale);

#pragma omp parallel
  {
    // Per-thread scratch, O(block^2 + block * head_dim).
    std::vector<T> s_blk(static_cast<size_t>(bs * bs));
    std::vector<T> o_acc(static_cast<size_t>(bs * hd));
    // Row statistics in double: they carry the whole row's normaliser.
    std::vector<double> m(static_cast<size_t>(bs)), l(static_cast<size_t>(bs));

    // Query block i sees key blocks 0..i, so work grows with i: dynamic
    // scheduling balances it. Each output block is written by one thread in a
    // fixed order, so the result does not depend on the schedule.
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < shape.batch; ++b) {
      for (int64_t h = 0; h < shape.q_heads; ++h) {
        for (int64_t ib = 0; ib < blocks; ++ib) {
          const int64_t g = h / group;
          const int64_t i0 = ib * bs, rows = std::min(bs, shape.seq - i0);
          const T* q_blk = q + idx.QOffset(b, i0, h);
          std::fill(o_acc.begin(), o_acc.end(), T(0));
          std::fill(m.begin(), m.end(), -std::numeric_limits<double>::infinity());
          std::fill(l.begin(), l.end(), 0.0);

          for (int64_t jb = 0; jb <= ib; ++jb) {
            const int64_t j0 = jb * bs, cols = std::min(bs, shape.seq - j0);
            const T* k_blk = k + idx.KvOffset(b, j0, g);
            const T* v_blk = v + idx.KvOffset(b, j0, g);
            // S = scale * Q K^T.
            Gemm<T>(false, true, rows, cols, hd, scale, q_blk, idx.q_stride(), k_blk,
                    idx.kv_stride(), T(0), s_blk.data(), bs);
            // Online softmax: rescale what was accumulated under the old max.
            for (int64_t r = 0; r < rows; ++r) {
              T* sr = s_blk.data() + r * bs;
              const int64_t visible = VisibleKeys(i0, r, j0, cols);
              T block_max = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : block_max)
              for (int64_t c = 0; c < visible; ++c) block_max = std::max(block_max, sr[c]);
              const double row_max = std::max(m[r], double(block_max));
              const T shift = static_cast<T>(row_max);
              double row_sum = 0;
#pragma omp simd reduction(+ : row_sum)
              for (int64_t c = 0; c < visible; ++c) {
                sr[c] = FastExp(sr[c] - shift);
                row_sum += sr[c];
              }
              for (int64_t c = visible; c < cols; ++c) sr[c] = T(0);
              // m[r] is -inf only before the first key block, where there is
              // nothing to rescale (and key 0 is always visible).
              const double alpha = jb == 0 ? 0.0 : std::exp(m[r] - row_max);
              l[r] = l[r] * alpha + row_sum;
              m[r] = row_max;
              if (jb > 0) {
                T* orow = o_acc.data() + r * hd;
                const T a = static_cast<T>(alpha);
#pragma omp simd
                for (int64_t d = 0; d < hd; ++d) orow[d] *= a;
              }
            }
            // O += P V.
            Gemm<T>(false, false, rows, hd, cols, T(1), s_blk.data(), bs, v_blk, idx.kv_stride(),
                    T(1), o_acc.data(), hd);
          }

          T* o_blk = out + idx.QOffset(b, i0, h);
          T* lse_blk = lse + idx.RowOffset(b, h, i0);
          for (int64_t r = 0; r < rows; ++r) {
            const T inv_l = static_cast<T>(1.0 / l[r]);
            T* orow = o_blk + r * idx.q_stride();
            const T* arow = o_acc.data() + r * hd;
#pragma omp simd
            for (int64_t d = 0; d < hd; ++d) orow[d] = arow[d] * inv_l;
            lse_blk[r] = static_cast<T>(m[r] + std::log(l[r]));
          }
        }
      }
    }
  }
}

template <typename T>
void AttentionBackward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                       const T* k, const T* v, const AttentionShape& shape) {
  CheckShape(shape);
  const Layout idx{shape.seq, shape.q_heads, shape.kv_heads, shape.head_dim};
  const int64_t hd = shape.head_dim;
  // A block longer than the sequence only wastes scratch.
  const int64_t bs = std::max<int64_t>(1, std::min(shape.block, shape.seq));
  const int64_t blocks = (shape.seq + bs - 1) / bs;
  const int64_t group = shape.q_heads / shape.kv_heads;
  const T scale = static_cast<T>(shape.scale);

  // delta = rowsum(dO * O) [batch, q_heads, seq]: the softmax backward's
  // correction term, O(seq) like lse.
  std::vector<T> delta(static_cast<size_t>(shape.batch * shape.q_heads * shape.seq));
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t b = 0; b < shape.batch; ++b) {
    for (int64_t s = 0; s < shape.seq; ++s) {
      for (int64_t h = 0; h < shape.q_heads; ++h) {
        const T* o_row = out + idx.QOffset(b, s, h);
        const T* do_row = dout + idx.QOffset(b, s, h);
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t d = 0; d < hd; ++d) sum += double(o_row[d]) * do_row[d];
        delta[idx.RowOffset(b, h, s)] = static_cast<T>(sum);
      }
    }
  }

  // Pass 1: dK and dV. A thread owns one key block of one kv head, so it
  // accumulates straight into dk/dv over every q head of the group and every
  // query block at or after the key block, in a fixed order.
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(bs * bs)), dp(static_cast<size_t>(bs * bs));
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < shape.batch; ++b) {
      for (int64_t g = 0; g < shape.kv_heads; ++g) {
        for (int64_t jb = 0; jb < blocks; ++jb) {
          const int64_t j0 = jb * bs, cols = std::min(bs, shape.seq - j0);
          const T* k_blk = k + idx.KvOffset(b, j0, g);
          const T* v_blk = v + idx.KvOffset(b, j0, g);
          T* dk_blk = dk + idx.KvOffset(b, j0, g);
          T* dv_blk = dv + idx.KvOffset(b, j0, g);
          for (int64_t c = 0; c < cols; ++c) {
            std::fill_n(dk_blk + c * idx.kv_stride(), hd, T(0));
            std::fill_n(dv_blk + c * idx.kv_stride(), hd, T(0));
          }
          for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            for (int64_t ib = jb; ib < blocks; ++ib) {
              const int64_t i0 = ib * bs, rows = std::min(bs, shape.seq - i0);
              const T* q_blk = q + idx.QOffset(b, i0, h);
              const T* do_blk = dout + idx.QOffset(b, i0, h);
              Gemm<T>(false, true, rows, cols, hd, scale, q_blk, idx.q_stride(), k_blk,
                      idx.kv_stride(), T(0), p.data(), bs);
              Probabilities(p.data(), bs, lse + idx.RowOffset(b, h, i0), rows, cols, i0, j0);
              // dV += P^T dO.
              Gemm<T>(true, false, cols, hd, rows, T(1), p.data(), bs, do_blk, idx.q_stride(), T(1),
                      dv_blk, idx.kv_stride());
              // dP = dO V^T, then dS = P * (dP - delta).
              Gemm<T>(false, true, rows, cols, hd, T(1), do_blk, idx.q_stride(), v_blk,
                      idx.kv_stride(), T(0), dp.data(), bs);
              ScoreGradient(dp.data(), p.data(), bs, delta.data() + idx.RowOffset(b, h, i0), rows,
                            cols);
              // dK += scale * dS^T Q.
              Gemm<T>(true, false, cols, hd, rows, scale, dp.data(), bs, q_blk, idx.q_stride(),
                      T(1), dk_blk, idx.kv_stride());
            }
          }
        }
      }
    }
  }

  // Pass 2: dQ. Every key block adds to a query block's dQ, so instead of
  // atomics or per-thread copies of dq, a thread owns one query block and
  // recomputes dS for it (two extra block GEMMs per block pair). The result is
  // independent of the thread count.
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(bs * bs)), dp(static_cast<size_t>(bs * bs));
#pragma omp for collapse(3) schedule(dynamic)
    for (int64_t b = 0; b < shape.batch; ++b) {
      for (int64_t h = 0; h < shape.q_heads; ++h) {
        for (int64_t ib = 0; ib < blocks; ++ib) {
          const int64_t g = h / group;
          const int64_t i0 = ib * bs, rows = std::min(bs, shape.seq - i0);
          const T* q_blk = q + idx.QOffset(b, i0, h);
          const T* do_blk = dout + idx.QOffset(b, i0, h);
          T* dq_blk = dq + idx.QOffset(b, i0, h);
          for (int64_t r = 0; r < rows; ++r) std::fill_n(dq_blk + r * idx.q_stride(), hd, T(0));
          for (int64_t jb = 0; jb <= ib; ++jb) {
            const int64_t j0 = jb * bs, cols = std::min(bs, shape.seq - j0);
            const T* k_blk = k + idx.KvOffset(b, j0, g);
            const T* v_blk = v + idx.KvOffset(b, j0, g);
            Gemm<T>(false, true, rows, cols, hd, scale, q_blk, idx.q_stride(), k_blk,
                    idx.kv_stride(), T(0), p.data(), bs);
            Probabilities(p.data(), bs, lse + idx.RowOffset(b, h, i0), rows, cols, i0, j0);
            Gemm<T>(false, true, rows, cols, hd, T(1), do_blk, idx.q_stride(), v_blk,
                    idx.kv_stride(), T(0), dp.data(), bs);
            ScoreGradient(dp.data(), p.data(), bs, delta.data() + idx.RowOffset(b, h, i0), rows,
                          cols);
            // dQ += scale * dS K.
            Gemm<T>(false, false, rows, hd, cols, scale, dp.data(), bs, k_blk, idx.kv_stride(),
                    T(1), dq_blk, idx.q_stride());
          }
        }
      }
    }
  }
}

template void AttentionForward<float>(float*, float*, const float*, const float*, const float*,
                                      const AttentionShape&);
template void AttentionForward<double>(double*, double*, const double*, const double*,
                                       const double*, const AttentionShape&);
template void AttentionBackward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, const float*, const float*, const float*,
                                       const AttentionShape&);
template void AttentionBackward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, const double*, const double*, const double*,
                                        const AttentionShape&);

}  // namespace moe::cpu
