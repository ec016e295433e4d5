#include "moe/all_gather_dispatcher.h"

#include "core/check.h"

namespace moe {
namespace {

void WaitAll(const TokenDispatcher::State& state) {
  for (HandlePtr& h : state.pending) h->Wait();
  state.pending.clear();
}

Tensor TakeOut(const TokenDispatcher::State& state) {
  WaitAll(state);
  Tensor out = std::move(state.pending_out);
  state.pending_out = Tensor();
  return out;
}

Shape Gathered(const Tensor& t, int ep) {
  Shape shape = t.shape();
  shape[0] *= ep;
  return shape;
}

}  // namespace

void AllGatherDispatcher::StartDispatch(const Tensor& x_TH, const Tensor& ids_TK,
                                        const Tensor& weights_TK, int64_t pad_capacity,
                                        State* state) const {
  MOE_CHECK(pad_capacity == 0)
      << "AllGatherDispatcher: padding to capacity is the all-to-all dispatcher's "
         "(--moe_token_dispatcher_type=alltoall)";
  MOE_CHECK(x_TH.ndim() == 2 && ids_TK.ndim() == 2 && ids_TK.dim(0) == x_TH.dim(0) &&
            weights_TK.shape() == ids_TK.shape())
      << "AllGatherDispatcher: x " << x_TH.Describe() << ", ids " << ids_TK.Describe()
      << " and weights " << weights_TK.Describe() << " must be [T, H], [T, K], [T, K]";
  MOE_CHECK(state->pending.empty())
      << "AllGatherDispatcher: a Start before the previous phase's Finish";
  const int ep = ep_size();
  state->num_tokens = x_TH.dim(0);
  if (ep == 1) {
    state->gathered_x = x_TH;
    state->gathered_ids = ids_TK;
    state->weights_TK = weights_TK;
    return;
  }
  // All-gather needs the same token count on every rank: check it (a tiny
  // all-reduce) rather than let the transport fail obscurely.
  Tensor range = Tensor::Empty({2}, DType::kI64);
  range.data<int64_t>()[0] = x_TH.dim(0);
  range.data<int64_t>()[1] = -x_TH.dim(0);
  ep_->AllReduceSync(range, ReduceOp::kMax);
  MOE_CHECK(range.data<int64_t>()[0] == -range.data<int64_t>()[1])
      << "AllGatherDispatcher: the EP ranks hold different token counts (between "
      << -range.data<int64_t>()[1] << " and " << range.data<int64_t>()[0]
      << "); use --moe_token_dispatcher_type=alltoall";
  state->gathered_x = Tensor::Empty(Gathered(x_TH, ep), x_TH.dtype());
  state->gathered_ids = Tensor::Empty(Gathered(ids_TK, ep), ids_TK.dtype());
  state->weights_TK = Tensor::Empty(Gathered(weights_TK, ep), weights_TK.dtype());
  state->pending.push_back(ep_->AllGather(state->gathered_x, x_TH));
  state->pending.push_back(ep_->AllGather(state->gathered_ids, ids_TK));
  state->pending.push_back(ep_->AllGather(state->weights_TK, weights_TK));
}

ExpertInput AllGatherDispatcher::FinishDispatch(State* state) const {
  WaitAll(*state);
  // Keep the pairs whose expert is local, renumbered from 0.
  const int64_t first = first_local_expert(), local = num_local_experts();
  Tensor local_ids = state->gathered_ids.Clone();
  int32_t* id = local_ids.data<int32_t>();
  for (int64_t p = 0; p < local_ids.numel(); ++p) {
    id[p] =
        (id[p] >= first && id[p] < first + local) ? static_cast<int32_t>(id[p] - first) : kUnrouted;
  }
  state->permutation = BuildPermutation(local_ids, local);
  ExpertInput in;
  in.rows_RH = PermuteRows(state->gathered_x, state->permutation);
  in.expert_offsets = state->permutation.expert_offsets;
  return in;
}

Tensor AllGatherDispatcher::SumScatter(const Tensor& gathered) const {
  const int ep = ep_size();
  if (ep == 1) return gathered;
  Shape shape = gathered.shape();
  shape[0] /= ep;
  Tensor mine = Tensor::Empty(shape, gathered.dtype());
  ep_->ReduceScatter(mine, gathered)->Wait();
  return mine;
}

void AllGatherDispatcher::StartCombine(const Tensor& out_RH, State* state) const {
  state->out_RH = out_RH;
  const Tensor partial = UnpermuteSum(out_RH, state->permutation, state->weights_TK);
  if (ep_size() == 1) {
    state->pending_out = partial;
    return;
  }
  Shape shape = partial.shape();
  shape[0] /= ep_size();
  state->pending_out = Tensor::Empty(shape, partial.dtype());
  state->pending.push_back(ep_->ReduceScatter(state->pending_out, partial));
}

Tensor AllGatherDispatcher::FinishCombine(State* state) const { return TakeOut(*state); }

void AllGatherDispatcher::StartCombineBackward(const Tensor& dy_TH, const State& state) const {
  MOE_CHECK(state.out_RH.defined())
      << "AllGatherDispatcher: backward needs the State of a finished forward";
  if (ep_size() == 1) {
    state.pending_out = dy_TH;
    return;
  }
  state.pending_out = Tensor::Empty(Gathered(dy_TH, ep_size()), dy_TH.dtype());
  state.pending.push_back(ep_->AllGather(state.pending_out, dy_TH));
}

Tensor AllGatherDispatcher::FinishCombineBackward(const State& state, Tensor* dweights_TK) const {
  const Tensor dy = TakeOut(state);
  // Only the pairs of local experts are non-zero here; the sum over ranks
  // gives every pair its one contribution.
  *dweights_TK = SumScatter(RowDots(dy, state.out_RH, state.permutation));
  return PermuteRows(dy, state.permutation, state.weights_TK);
}

void AllGatherDispatcher::StartDispatchBackward(const Tensor& drows_RH, const State& state) const {
  const Tensor partial = UnpermuteSum(drows_RH, state.permutation);
  if (ep_size() == 1) {
    state.pending_out = partial;
    return;
  }
  Shape shape = partial.shape();
  shape[0] /= ep_size();
  state.pending_out = Tensor::Empty(shape, partial.dtype());
  state.pending.push_back(ep_->ReduceScatter(state.pending_out, partial));
}

Tensor AllGatherDispatcher::FinishDispatchBackward(const State& state) const {
  return TakeOut(state);
}

}  // namespace moe
