// The token <-> expert permutation of an MoE layer.
//
// Shape suffixes used throughout moe/ (torchtitan style):
//   T  tokens                      H  hidden size
//   E  experts                     I  expert intermediate size
//   K  experts per token (top_k)   R  routed rows = T * K, one per (token, choice) pair
// e.g. x_TH is [T, H], ids_TK is [T, K], rows_RH is [R, H].
//
// Token t sends one row per choice j, the "pair" p = t * K + j, to expert
// ids_TK[t, j]. A stable counting sort of the pairs by expert puts each
// expert's rows in one contiguous range, in increasing pair order inside the
// range, so the layout depends on the ids alone (never on threads). A token
// dispatcher can sit between PermuteRows and the grouped GEMM: it only needs
// the rows and the per-expert offsets.
//
// Not every pair is a row: an id of kUnrouted (-1) marks a pair that goes
// nowhere (a top-p slot the token did not use, or a pair dropped at expert
// capacity), and PadToCapacity adds padding rows that belong to no pair.
// Such pairs contribute nothing to the combine; padding rows are zeros.
#ifndef MOE_MOE_PERMUTATION_H_
#define MOE_MOE_PERMUTATION_H_

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace moe {

// The expert id of a pair that goes to no expert.
inline constexpr int32_t kUnrouted = -1;

struct Permutation {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  int64_t num_experts = 0;
  // Rows of expert e are [expert_offsets[e], expert_offsets[e + 1]); [E + 1],
  // expert_offsets[0] = 0 and expert_offsets[E] = R.
  std::vector<int64_t> expert_offsets;
  // The pair t * K + j that permuted row r holds, or -1 for a padding row; [R].
  std::vector<int32_t> row_to_pair;
  // The permuted row of pair t * K + j, or -1 for an unrouted pair; [T * K].
  // On the routed pairs, the inverse of row_to_pair.
  std::vector<int32_t> pair_to_row;

  int64_t num_pairs() const { return num_tokens * top_k; }
  int64_t num_rows() const { return expert_offsets.empty() ? 0 : expert_offsets.back(); }
  int64_t expert_rows(int64_t e) const { return expert_offsets[e + 1] - expert_offsets[e]; }
};

// ids_TK: kI32 [T, K] CPU, every id in [0, num_experts) or kUnrouted (checked).
Permutation BuildPermutation(const Tensor& ids_TK, int64_t num_experts);

// The same pairs with every expert's range padded to exactly `capacity` rows
// (static shapes, Megatron's --moe_pad_expert_input_to_capacity): expert e
// owns rows [e * capacity, (e + 1) * capacity), its real rows first. Dies
// when an expert holds more than `capacity` rows (drop first).
Permutation PadToCapacity(const Permutation& permutation, int64_t capacity);

// The gather: rows_RH[r] = scale_TK[p] * x_TH[p / K] with p = row_to_pair[r]
// (zeros for a padding row);
// an undefined scale_TK means 1. x_TH: [T, H] kF32/kF64 CPU; scale_TK: [T, K],
// x's dtype. Also the backward of UnpermuteSum with respect to its rows.
Tensor PermuteRows(const Tensor& x_TH, const Permutation& permutation,
                   const Tensor& scale_TK = Tensor());

// The scatter-add back into token order:
//   y_TH[t] = sum_{j = 0..K-1} scale_TK[t, j] * rows_RH[pair_to_row[t * K + j]]
// summed in that order of j over the routed pairs (deterministic, no atomics:
// each token gathers its own K rows; a token with none gets zeros). An undefined scale_TK means 1,
// which makes this the backward of PermuteRows with respect to x.
Tensor UnpermuteSum(const Tensor& rows_RH, const Permutation& permutation,
                    const Tensor& scale_TK = Tensor());

// dots_TK[t, j] = <a_TH[t], rows_RH[pair_to_row[t * K + j]]> (0 for an
// unrouted pair): the gradient of
// UnpermuteSum's output with respect to its scales, with a_TH = dy_TH.
Tensor RowDots(const Tensor& a_TH, const Tensor& rows_RH, const Permutation& permutation);

}  // namespace moe

#endif  // MOE_MOE_PERMUTATION_H_
