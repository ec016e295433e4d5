#include "moe/permutation.h"

#include <cstring>
#include <limits>

namespace moe {
namespace {

void CheckRowsTensor(const char* what, const Tensor& t, int64_t rows) {
  MOE_CHECK(t.device() == Device::kCpu)
      << what << ": " << t.Describe() << " is on CUDA; the CUDA MoE path is not built yet";
  MOE_CHECK(t.ndim() == 2 && t.dim(0) == rows)
      << what << ": expected [" << rows << ", hidden], got " << t.Describe();
  MOE_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF64)
      << what << ": expected f32 or f64, got " << t.Describe();
}

void CheckScale(const char* what, const Tensor& scale_TK, const Permutation& p, DType dtype) {
  if (!scale_TK.defined()) return;
  MOE_CHECK(scale_TK.device() == Device::kCpu && scale_TK.dtype() == dtype &&
            scale_TK.numel() == p.num_pairs())
      << what << ": scale must be " << DTypeName(dtype) << "[" << p.num_tokens << ", " << p.top_k
      << "] on cpu, got " << scale_TK.Describe();
}

template <typename T>
void Gather(T* rows, const T* x, const T* scale, const int32_t* row_to_pair, int64_t num_rows,
            int64_t top_k, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < num_rows; ++r) {
    const int64_t pair = row_to_pair[r];
    T* dst = rows + r * hidden;
    if (pair < 0) {  // a padding row: zeros, so the expert computes nothing from it
      std::memset(dst, 0, sizeof(T) * static_cast<size_t>(hidden));
      continue;
    }
    const T* src = x + (pair / top_k) * hidden;
    if (scale == nullptr) {
      std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(hidden));
    } else {
      const T s = scale[pair];
#pragma omp simd
      for (int64_t h = 0; h < hidden; ++h) dst[h] = s * src[h];
    }
  }
}

template <typename T>
void Combine(T* y, const T* rows, const T* scale, const int32_t* pair_to_row, int64_t num_tokens,
             int64_t top_k, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < num_tokens; ++t) {
    T* dst = y + t * hidden;
    bool first = true;
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t pair = t * top_k + j;
      if (pair_to_row[pair] < 0) continue;  // an unused slot or a dropped pair
      const T* src = rows + static_cast<int64_t>(pair_to_row[pair]) * hidden;
      const T s = scale == nullptr ? T(1) : scale[pair];
      if (first) {
#pragma omp simd
        for (int64_t h = 0; h < hidden; ++h) dst[h] = s * src[h];
      } else {
#pragma omp simd
        for (int64_t h = 0; h < hidden; ++h) dst[h] += s * src[h];
      }
      first = false;
    }
    // A token with no routed pair at all (every choice dropped) gets zero.
    if (first) std::memset(dst, 0, sizeof(T) * static_cast<size_t>(hidden));
  }
}

// A dot product with a fixed summation order, independent of the pointers'
// alignment (a vectorised `reduction` may peel a varying number of leading
// elements, which would break bit-for-bit determinism).
template <typename T>
T FixedOrderDot(const T* a, const T* b, int64_t n) {
  constexpr int kLanes = 8;
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  for (; i < n; ++i) lanes[0] += a[i] * b[i];
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

template <typename T>
void Dots(T* dots, const T* a, const T* rows, const int32_t* pair_to_row, int64_t num_tokens,
          int64_t top_k, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t pair = t * top_k + j;
      dots[pair] =
          pair_to_row[pair] < 0
              ? T(0)
              : FixedOrderDot(a + t * hidden,
                              rows + static_cast<int64_t>(pair_to_row[pair]) * hidden, hidden);
    }
  }
}

}  // namespace

Permutation BuildPermutation(const Tensor& ids_TK, int64_t num_experts) {
  MOE_CHECK(num_experts >= 1) << "BuildPermutation: num_experts must be >= 1, got " << num_experts;
  MOE_CHECK(ids_TK.device() == Device::kCpu && ids_TK.dtype() == DType::kI32 && ids_TK.ndim() == 2)
      << "BuildPermutation: ids must be i32[tokens, top_k] on cpu, got " << ids_TK.Describe();
  MOE_CHECK(ids_TK.numel() <= std::numeric_limits<int32_t>::max())
      << "BuildPermutation: " << ids_TK.numel() << " routed rows exceed the int32 row index";
  Permutation p;
  p.num_tokens = ids_TK.dim(0);
  p.top_k = ids_TK.dim(1);
  p.num_experts = num_experts;
  const int64_t num_pairs = p.num_pairs();
  const int32_t* ids = ids_TK.data<int32_t>();

  // Counting sort: histogram, exclusive prefix sum, then a stable placement.
  // O(R) sequential integer work, negligible next to the expert GEMMs.
  p.expert_offsets.assign(static_cast<size_t>(num_experts) + 1, 0);
  for (int64_t pair = 0; pair < num_pairs; ++pair) {
    const int32_t e = ids[pair];
    MOE_CHECK(e >= kUnrouted && e < num_experts)
        << "BuildPermutation: expert id " << e << " of token " << pair / p.top_k << " choice "
        << pair % p.top_k << " is outside [0, " << num_experts << ") (and not " << kUnrouted
        << ", an unused slot)";
    if (e != kUnrouted) ++p.expert_offsets[e + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) p.expert_offsets[e + 1] += p.expert_offsets[e];
  std::vector<int64_t> next(p.expert_offsets.begin(), p.expert_offsets.end() - 1);
  p.row_to_pair.resize(static_cast<size_t>(p.expert_offsets[num_experts]));
  p.pair_to_row.resize(static_cast<size_t>(num_pairs));
  for (int64_t pair = 0; pair < num_pairs; ++pair) {
    if (ids[pair] == kUnrouted) {
      p.pair_to_row[pair] = -1;
      continue;
    }
    const int64_t row = next[ids[pair]]++;
    p.row_to_pair[row] = static_cast<int32_t>(pair);
    p.pair_to_row[pair] = static_cast<int32_t>(row);
  }
  return p;
}

Permutation PadToCapacity(const Permutation& p, int64_t capacity) {
  MOE_CHECK(capacity >= 0) << "PadToCapacity: capacity must be >= 0, got " << capacity;
  Permutation padded;
  padded.num_tokens = p.num_tokens;
  padded.top_k = p.top_k;
  padded.num_experts = p.num_experts;
  padded.expert_offsets.resize(p.expert_offsets.size());
  for (size_t e = 0; e < p.expert_offsets.size(); ++e) {
    padded.expert_offsets[e] = static_cast<int64_t>(e) * capacity;
  }
  padded.row_to_pair.assign(static_cast<size_t>(p.num_experts * capacity), -1);
  padded.pair_to_row.assign(p.pair_to_row.size(), -1);
  for (int64_t e = 0; e < p.num_experts; ++e) {
    MOE_CHECK(p.expert_rows(e) <= capacity)
        << "PadToCapacity: expert " << e << " holds " << p.expert_rows(e)
        << " rows, more than the capacity " << capacity << "; drop to capacity first";
    for (int64_t i = 0; i < p.expert_rows(e); ++i) {
      const int32_t pair = p.row_to_pair[p.expert_offsets[e] + i];
      const int64_t row = e * capacity + i;
      padded.row_to_pair[row] = pair;
      padded.pair_to_row[pair] = static_cast<int32_t>(row);
    }
  }
  return padded;
}

Tensor PermuteRows(const Tensor& x_TH, const Permutation& p, const Tensor& scale_TK) {
  CheckRowsTensor("PermuteRows", x_TH, p.num_tokens);
  CheckScale("PermuteRows", scale_TK, p, x_TH.dtype());
  const int64_t hidden = x_TH.dim(1);
  Tensor rows = Tensor::Empty({p.num_rows(), hidden}, x_TH.dtype());
  if (x_TH.dtype() == DType::kF64) {
    Gather(rows.data<double>(), x_TH.data<double>(),
           scale_TK.defined() ? scale_TK.data<double>() : nullptr, p.row_to_pair.data(),
           p.num_rows(), p.top_k, hidden);
  } else {
    Gather(rows.data<float>(), x_TH.data<float>(),
           scale_TK.defined() ? scale_TK.data<float>() : nullptr, p.row_to_pair.data(),
           p.num_rows(), p.top_k, hidden);
  }
  return rows;
}

Tensor UnpermuteSum(const Tensor& rows_RH, const Permutation& p, const Tensor& scale_TK) {
  CheckRowsTensor("UnpermuteSum", rows_RH, p.num_rows());
  CheckScale("UnpermuteSum", scale_TK, p, rows_RH.dtype());
  const int64_t hidden = rows_RH.dim(1);
  Tensor y = Tensor::Empty({p.num_tokens, hidden}, rows_RH.dtype());
  if (rows_RH.dtype() == DType::kF64) {
    Combine(y.data<double>(), rows_RH.data<double>(),
            scale_TK.defined() ? scale_TK.data<double>() : nullptr, p.pair_to_row.data(),
            p.num_tokens, p.top_k, hidden);
  } else {
    Combine(y.data<float>(), rows_RH.data<float>(),
            scale_TK.defined() ? scale_TK.data<float>() : nullptr, p.pair_to_row.data(),
            p.num_tokens, p.top_k, hidden);
  }
  return y;
}

Tensor RowDots(const Tensor& a_TH, const Tensor& rows_RH, const Permutation& p) {
  CheckRowsTensor("RowDots", a_TH, p.num_tokens);
  CheckRowsTensor("RowDots", rows_RH, p.num_rows());
  MOE_CHECK(a_TH.dtype() == rows_RH.dtype() && a_TH.dim(1) == rows_RH.dim(1))
      << "RowDots: " << a_TH.Describe() << " and " << rows_RH.Describe() << " do not match";
  const int64_t hidden = a_TH.dim(1);
  Tensor dots = Tensor::Empty({p.num_tokens, p.top_k}, a_TH.dtype());
  if (p.num_pairs() == 0) return dots;
  if (a_TH.dtype() == DType::kF64) {
    Dots(dots.data<double>(), a_TH.data<double>(), rows_RH.data<double>(), p.pair_to_row.data(),
         p.num_tokens, p.top_k, hidden);
  } else {
    Dots(dots.data<float>(), a_TH.data<float>(), rows_RH.data<float>(), p.pair_to_row.data(),
         p.num_tokens, p.top_k, hidden);
  }
  return dots;
}

}  // namespace moe
