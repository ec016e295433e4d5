// Token dispatchers: how the (token, choice) pairs of one rank reach the
// experts that the expert-parallel (EP) group spreads over its ranks, and how
// the experts' outputs come back. Shape suffixes: see moe/permutation.h.
//
// Experts are split in contiguous blocks: EP rank p holds the experts
// [p * El, (p + 1) * El), El = E / EP. Every rank routes its own tokens over
// all E experts (ids_TK, kUnrouted for a pair that goes nowhere: see
// moe/capacity.h and top-p routing); the dispatcher hands the local experts
// their rows grouped by local expert, and the combine gives back
//   y_TH[t] = sum_j weights_TK[t, j] * expert_{ids[t, j]}(x_TH[t])
// on the rank that owns token t, whichever rank computed the expert.
//
// Every phase is split in Start and Finish so that the caller can compute
// while the tokens travel (the MoE layer runs the router's backward while the
// last all-to-all of its backward is in flight). Finish must follow its Start
// before the next Start; the State carries everything between the four
// forward and the four backward phases of one micro-batch (the MoE layer
// keeps it in its Saved).
//
// Implementations: AllToAllDispatcher (moe/all_to_all_dispatcher.h) and
// AllGatherDispatcher (moe/all_gather_dispatcher.h).
#ifndef MOE_MOE_TOKEN_DISPATCHER_H_
#define MOE_MOE_TOKEN_DISPATCHER_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"
#include "moe/permutation.h"
#include "parallel/communicator.h"

namespace moe {

enum class DispatcherType { kAllToAll, kAllGather };
std::string_view DispatcherTypeName(DispatcherType type);  // "alltoall" / "allgather"
absl::StatusOr<DispatcherType> ParseDispatcherType(std::string_view name);

// The rows this rank's experts compute on.
struct ExpertInput {
  Tensor rows_RH;                       // grouped by local expert
  std::vector<int64_t> expert_offsets;  // [El + 1]
};

class TokenDispatcher {
 public:
  // What one micro-batch's dispatch leaves for its combine and its backward.
  // The fields are the implementations'; callers only hold it.
  struct State {
    Permutation permutation;  // this rank's (or the gathered) pairs -> rows
    Tensor weights_TK;        // the combine weights (gathered for all-gather)
    // All-to-all: rows per EP rank sent / received, and the received rows'
    // [source rank][local expert] block sizes.
    std::vector<int64_t> send_counts, recv_counts, recv_blocks;
    // The expert outputs in the order of `permutation`, for d weights.
    Tensor out_RH;
    int64_t num_tokens = 0;
    // In flight between a Start and its Finish: transfer slots, mutable so
    // that backward, which only reads the forward's plan, can use them.
    mutable std::vector<HandlePtr> pending;
    mutable Tensor pending_out;
    mutable Tensor pending_dweights;
    mutable std::vector<int64_t> pending_counts;
    // All-gather: the gathered inputs of the forward.
    Tensor gathered_x, gathered_ids;
  };

  virtual ~TokenDispatcher() = default;

  // Forward. x_TH [T, H]; ids_TK kI32 [T, K] over all E experts; weights_TK
  // [T, K] like x. pad_capacity > 0 (all-to-all only): every expert gets
  // exactly that many rows from every rank, zero rows filling the gap
  // (static shapes, --moe_pad_expert_input_to_capacity); no expert may hold
  // more (drop first, moe/capacity.h).
  virtual void StartDispatch(const Tensor& x_TH, const Tensor& ids_TK, const Tensor& weights_TK,
                             int64_t pad_capacity, State* state) const = 0;
  virtual ExpertInput FinishDispatch(State* state) const = 0;
  // out_RH: the local experts' outputs, rows as FinishDispatch gave them.
  virtual void StartCombine(const Tensor& out_RH, State* state) const = 0;
  virtual Tensor FinishCombine(State* state) const = 0;  // y_TH

  // Backward, the same phases reversed. dy_TH like y.
  virtual void StartCombineBackward(const Tensor& dy_TH, const State& state) const = 0;
  // -> dout_RH (rows as FinishDispatch gave them); *dweights_TK = d loss / d
  // weights_TK (0 for unrouted pairs).
  virtual Tensor FinishCombineBackward(const State& state, Tensor* dweights_TK) const = 0;
  // drows_RH: d loss / d rows_RH of FinishDispatch.
  virtual void StartDispatchBackward(const Tensor& drows_RH, const State& state) const = 0;
  virtual Tensor FinishDispatchBackward(const State& state) const = 0;  // dx_TH (=)

  int64_t num_experts() const { return num_experts_; }
  int64_t num_local_experts() const { return num_experts_ / ep_size(); }
  int64_t first_local_expert() const { return ep_rank() * num_local_experts(); }
  int ep_size() const { return ep_ == nullptr ? 1 : ep_->size(); }
  int ep_rank() const { return ep_ == nullptr ? 0 : ep_->rank(); }

 protected:
  // ep: the expert-parallel group (nullptr: one rank holds every expert);
  // it must outlive the dispatcher. Dies unless EP divides num_experts.
  TokenDispatcher(int64_t num_experts, Communicator* ep);

  int64_t num_experts_;
  Communicator* ep_;
};

std::unique_ptr<TokenDispatcher> MakeTokenDispatcher(DispatcherType type, int64_t num_experts,
                                                     Communicator* ep);

}  // namespace moe

#endif  // MOE_MOE_TOKEN_DISPATCHER_H_
