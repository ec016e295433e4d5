// The all-to-all token dispatcher (Megatron-Core's MoEAlltoAllTokenDispatcher):
//
//   forward   permute the local pairs so each destination expert's rows are
//             contiguous (experts of EP rank p form one block) -> exchange
//             the per-expert counts -> all-to-all-v the rows over EP -> sort
//             the received [source rank][local expert] blocks into
//             [local expert][source rank] order -> (experts) -> the exact
//             reverse: sort back, all-to-all-v, weighted unpermute in token
//             order.
//   backward  the same four moves in reverse, with the weights applied on the
//             way out (d rows = weight * dy) and d weights = <dy, expert output>.
//
// Each rank sends only its own pairs, so traffic is K * T * H per layer and
// direction whatever EP is. With EP = 1 (no group) no communication happens
// and this is the single-rank MoE layer.
#ifndef MOE_MOE_ALL_TO_ALL_DISPATCHER_H_
#define MOE_MOE_ALL_TO_ALL_DISPATCHER_H_

#include "moe/token_dispatcher.h"

namespace moe {

class AllToAllDispatcher final : public TokenDispatcher {
 public:
  AllToAllDispatcher(int64_t num_experts, Communicator* ep) : TokenDispatcher(num_experts, ep) {}

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
  // Sends rows (in local-permutation order: blocks per destination rank) and
  // keeps the handle in state->pending.
  void StartExchange(const Tensor& rows, const std::vector<int64_t>& send_counts,
                     const State& state) const;
  // Waits for the exchange started last; returns what arrived.
  Tensor FinishExchange(const State& state) const;
  // Received [source][local expert] blocks <-> [local expert][source] order.
  Tensor SortByLocalExpert(const Tensor& rows, const State& state) const;
  Tensor UnsortByLocalExpert(const Tensor& rows, const State& state) const;
};

}  // namespace moe

#endif  // MOE_MOE_ALL_TO_ALL_DISPATCHER_H_
