// Expert tensor parallelism (ETP): each expert's weights are split over the
// ETP ranks along the intermediate dimension (w1, w3: rows; w2: columns),
// so every ETP rank computes a partial output of every row, and the sum over
// the ETP group is the expert's output. Around the experts of an MoE layer:
//
//   Gather      the rows this rank received (grouped by local expert) go to
//               every ETP peer: an all-gather-v over ETP, sorted so that the
//               result is again grouped by local expert ([expert][source]).
//   ScatterSum  the partial outputs of those rows go back to the rank that
//               gathered them, summed over the ETP group: a reduce-scatter-v.
//
// Gather's backward is ScatterSum and vice versa, so the MoE layer calls
// Gather after the dispatch and after the combine's backward, ScatterSum
// before the combine and before the dispatch's backward (Megatron-Core's
// all-gather-v / reduce-scatter-v over the expert-tensor-parallel group).
// Both are built on all-to-all-v (the communicator has no v-variants of
// all-gather / reduce-scatter); each is blocking.
#ifndef MOE_MOE_EXPERT_TENSOR_EXCHANGE_H_
#define MOE_MOE_EXPERT_TENSOR_EXCHANGE_H_

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace moe {

class ExpertTensorExchange {
 public:
  // What ScatterSum needs from the Gather of the same rows.
  struct Layout {
    std::vector<int64_t> counts;  // [ETP, El]: rows of source rank s for local expert e
  };

  // etp: the expert-tensor-parallel group (outlives this object).
  ExpertTensorExchange(Communicator* etp, int64_t local_experts);

  // rows_RH grouped by local expert with `offsets` [El + 1] -> every ETP
  // rank's rows grouped by local expert; *gathered_offsets [El + 1].
  Tensor Gather(const Tensor& rows_RH, const std::vector<int64_t>& offsets, Layout* layout,
                std::vector<int64_t>* gathered_offsets) const;
  // The same layout the other way: full_RH (the gathered rows' partial
  // outputs) -> this rank's own rows, summed over the ETP group.
  Tensor ScatterSum(const Tensor& full_RH, const Layout& layout) const;

  // d loss / d rows of a Gather, given d loss / d its output: ScatterSum.
  // d loss / d full_RH of a ScatterSum: Gather of the rows' gradient with the
  // same layout (GatherLike).
  Tensor GatherLike(const Tensor& rows_RH, const Layout& layout) const;

  int size() const { return etp_->size(); }

 private:
  Communicator* etp_;
  int64_t local_experts_;
};

}  // namespace moe

#endif  // MOE_MOE_EXPERT_TENSOR_EXCHANGE_H_
