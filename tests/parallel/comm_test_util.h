// Data and checks shared by the communicator tests: every rank can rebuild
// every other rank's input from (seed, rank), so each rank computes the serial
// reference of a collective by itself.
#ifndef MOE_TESTS_PARALLEL_COMM_TEST_UTIL_H_
#define MOE_TESTS_PARALLEL_COMM_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe::testing {

// Rank `rank`'s input: normal floats (bf16 rounded from them), or integers
// uniform in [-1000, 1000] (i32) / [-2^40, 2^40] (i64), keyed by Philox(seed).
// Never all zero.
Tensor RankData(const Shape& shape, DType dtype, uint64_t seed, int rank);

// Elementwise sum / max over ranks 0..n-1 of RankData, accumulated in double
// (floats) or exactly (integers), stored in `dtype`.
Tensor SerialReduce(const Shape& shape, DType dtype, uint64_t seed, int n, bool max);

// The largest difference of a and b relative to b's largest magnitude, for
// floating dtypes; for integer and bf16 tensors, 0 when bitwise equal and 1
// otherwise. Shapes may differ if numel agrees.
double Mismatch(const Tensor& a, const Tensor& b);

// Tolerance of a sum over n ranks in `dtype` against the double reference:
// exact for integers; n roundings of the dtype's epsilon otherwise.
double SumTolerance(DType dtype, int n);

// The rows per (source, destination) of the all-to-all-v tests: Philox
// counts in [0, max_rows]; with empty_ranks, source 0 sends nothing and, when
// n > 1, destination n-1 receives nothing.
std::vector<int64_t> AllToAllRows(uint64_t seed, int n, int source, int max_rows, bool empty_ranks);

}  // namespace moe::testing

#endif  // MOE_TESTS_PARALLEL_COMM_TEST_UTIL_H_
