// The all-gather token dispatcher (Megatron-Core's MoEAllGatherTokenDispatcher):
//
//   forward   all-gather every EP rank's tokens, ids and weights -> each rank
//             keeps the pairs routed to its own experts -> (experts) -> each
//             rank sums its experts' weighted outputs for ALL gathered tokens
//             (zero where none of its experts was chosen) -> reduce-scatter,
//             so every rank gets the full sum for its own tokens.
//   backward  all-gather dy -> d rows and d weights of the local pairs ->
//             reduce-scatter d x (and d weights: each pair is non-zero on the
//             one rank that holds its expert).
//
// Traffic is EP * T * H per direction whatever K is, against K * T * H for
// the all-to-all: the better choice for small EP or large K. Every EP rank
// must hold the same number of tokens (true of equal micro-batches); padding
// to capacity is the all-to-all dispatcher's.
#ifndef MOE_MOE_ALL_GATHER_DISPATCHER_H_
#define MOE_MOE_ALL_GATHER_DISPATCHER_H_

#include "moe/token_dispatcher.h"

namespace moe {

class AllGatherDispatcher final : public TokenDispatcher {
 public:
  AllGatherDispatcher(int64_t num_experts, Communicator* ep) : TokenDispatcher(num_experts, ep) {}

  void StartDispatch(const Tensor& x_TH, const Tensor& ids_TK, const Tensor& weights_TK,
                     int64_t pad_capacity, State* state) const override;
  ExpertInput FinishDispatch(State* state) const override;
  void StartCombine(const Tensor& out_RH, State* state) const override;
  Tensor FinishCombine(State* state) const override;
  void StartCombineBackward(const Tensor& dy_TH, const State& state) const override;
  Tensor FinishCombineBackward(const State& state, Tensor* dweights_TK) const override;
  void StartDispatchBackward(const Tensor& drows_RH, const State& state) const override;
  Tensor FinishDispatchBackward(const State& state) const override;

 private:
  // The sum over EP of `gathered` [EP * T, ...], this rank's block [T, ...].
  Tensor SumScatter(const Tensor& gathered) const;
};

}  // namespace moe

#endif  // MOE_MOE_ALL_GATHER_DISPATCHER_H_
