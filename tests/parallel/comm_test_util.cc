#include "tests/parallel/comm_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/philox.h"
#include "tests/test_util.h"

namespace moe::testing {
namespace {

int64_t IntValue(const Philox& philox, int64_t i, DType dtype) {
  const auto block = philox.Block(static_cast<uint64_t>(i));
  if (dtype == DType::kI32) return static_cast<int64_t>(block[0] % 2001) - 1000;
  const uint64_t bits = (static_cast<uint64_t>(block[0]) << 32 | block[1]) % (1ull << 41);
  return static_cast<int64_t>(bits) - (int64_t{1} << 40);
}

bool IsInteger(DType dtype) { return dtype == DType::kI32 || dtype == DType::kI64; }

}  // namespace

Tensor RankData(const Shape& shape, DType dtype, uint64_t seed, int rank) {
  const uint64_t key = seed * 1009 + static_cast<uint64_t>(rank);
  if (!IsInteger(dtype)) {
    if (dtype == DType::kBF16) return RandomTensor(shape, DType::kF32, key).Cast(DType::kBF16);
    return RandomTensor(shape, dtype, key);
  }
  Tensor t = Tensor::Empty(shape, dtype);
  const Philox philox(key, /*stream=*/7);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = IntValue(philox, i, dtype);
    if (dtype == DType::kI32) {
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
    } else {
      t.data<int64_t>()[i] = v;
    }
  }
  return t;
}

Tensor SerialReduce(const Shape& shape, DType dtype, uint64_t seed, int n, bool max) {
  Tensor result = Tensor::Empty(shape, dtype);
  if (IsInteger(dtype)) {
    std::vector<int64_t> acc(result.numel(), max ? std::numeric_limits<int64_t>::min() : 0);
    for (int r = 0; r < n; ++r) {
      const Tensor t = RankData(shape, dtype, seed, r);
      for (int64_t i = 0; i < t.numel(); ++i) {
        const int64_t v = dtype == DType::kI32 ? t.data<int32_t>()[i] : t.data<int64_t>()[i];
        acc[i] = max ? std::max(acc[i], v) : acc[i] + v;
      }
    }
    for (int64_t i = 0; i < result.numel(); ++i) {
      if (dtype == DType::kI32) {
        result.data<int32_t>()[i] = static_cast<int32_t>(acc[i]);
      } else {
        result.data<int64_t>()[i] = acc[i];
      }
    }
    return result;
  }
  std::vector<double> acc(result.numel(), max ? -std::numeric_limits<double>::infinity() : 0);
  for (int r = 0; r < n; ++r) {
    const Tensor t = RankData(shape, dtype, seed, r);
    for (int64_t i = 0; i < t.numel(); ++i) {
      acc[i] = max ? std::max(acc[i], t.GetAsDouble(i)) : acc[i] + t.GetAsDouble(i);
    }
  }
  for (int64_t i = 0; i < result.numel(); ++i) result.SetFromDouble(i, acc[i]);
  return result;
}

double Mismatch(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel() || a.dtype() != b.dtype()) return 1;
  if (a.numel() == 0) return 0;
  if (IsInteger(a.dtype()) || a.dtype() == DType::kBF16) {
    return std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0 ? 0 : 1;
  }
  return MaxRelativeError(a, b);
}

double SumTolerance(DType dtype, int n) {
  if (IsInteger(dtype)) return 0;
  const double eps = dtype == DType::kF64 ? 1.1e-16 : 6e-8;
  // A sum of n terms of similar magnitude: at most about n roundings, each
  // relative to a partial sum no larger than n times the largest term.
  return 4.0 * (n + 1) * n * eps;
}

std::vector<int64_t> AllToAllRows(uint64_t seed, int n, int source, int max_rows,
                                  bool empty_ranks) {
  std::vector<int64_t> rows(n, 0);
  if (empty_ranks && source == 0) return rows;
  const Philox philox(seed, /*stream=*/11);
  for (int d = 0; d < n; ++d) {
    if (empty_ranks && n > 1 && d == n - 1) continue;
    const auto block = philox.Block(static_cast<uint64_t>(source * n + d));
    rows[d] = static_cast<int64_t>(block[0] % static_cast<uint32_t>(max_rows + 1));
  }
  return rows;
}

}  // namespace moe::testing
