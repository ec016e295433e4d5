#include "moe/all_to_all_dispatcher.h"

#include <cstring>
#include <numeric>

#include "core/check.h"

namespace moe {
namespace {

// Copies row blocks: block b of `from` (in from-order) goes to the place it
// has in to-order. `sizes_from[b]` are the block sizes in from-order and
// `to_index[b]` the block's position in to-order.
Tensor MoveBlocks(const Tensor& from, const std::vector<int64_t>& sizes_from,
                  const std::vector<int64_t>& to_index) {
  const int64_t blocks = static_cast<int64_t>(sizes_from.size());
  std::vector<int64_t> sizes_to(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) sizes_to[to_index[b]] = sizes_from[b];
  std::vector<int64_t> start_to(static_cast<size_t>(blocks), 0);
  for (int64_t b = 1; b < blocks; ++b) start_to[b] = start_to[b - 1] + sizes_to[b - 1];
  Tensor to = Tensor::Empty(from.shape(), from.dtype());
  const int64_t row_elems = from.dim(0) > 0 ? from.numel() / from.dim(0) : 0;
  const int64_t row_bytes = row_elems * static_cast<int64_t>(DTypeSize(from.dtype()));
  const auto* src = static_cast<const char*>(from.raw_data());
  auto* dst = static_cast<char*>(to.raw_data());
  int64_t start_from = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    std::memcpy(dst + start_to[to_index[b]] * row_bytes, src + start_from * row_bytes,
                static_cast<size_t>(sizes_from[b] * row_bytes));
    start_from += sizes_from[b];
  }
  return to;
}

}  // namespace

void AllToAllDispatcher::StartExchange(const Tensor& rows, const std::vector<int64_t>& send_counts,
                                       const State& state) const {
  MOE_CHECK(state.pending.empty())
      << "AllToAllDispatcher: a Start before the previous phase's Finish";
  if (ep_size() == 1) {
    state.pending_out = rows;
    return;
  }
  state.pending.push_back(
      ep_->AllToAllV(&state.pending_out, &state.pending_counts, rows, send_counts));
}

Tensor AllToAllDispatcher::FinishExchange(const State& state) const {
  for (HandlePtr& h : state.pending) h->Wait();
  state.pending.clear();
  Tensor out = std::move(state.pending_out);
  state.pending_out = Tensor();
  return out;
}

Tensor AllToAllDispatcher::SortByLocalExpert(const Tensor& rows, const State& state) const {
  const int64_t ep = ep_size(), local = num_local_experts();
  if (ep == 1) return rows;
  std::vector<int64_t> to_index(static_cast<size_t>(ep * local));
  for (int64_t src = 0; src < ep; ++src) {
    for (int64_t e = 0; e < local; ++e) to_index[src * local + e] = e * ep + src;
  }
  return MoveBlocks(rows, state.recv_blocks, to_index);
}

Tensor AllToAllDispatcher::UnsortByLocalExpert(const Tensor& rows, const State& state) const {
  const int64_t ep = ep_size(), local = num_local_experts();
  if (ep == 1) return rows;
  std::vector<int64_t> sizes(static_cast<size_t>(ep * local));
  std::vector<int64_t> to_index(static_cast<size_t>(ep * local));
  for (int64_t e = 0; e < local; ++e) {
    for (int64_t src = 0; src < ep; ++src) {
      sizes[e * ep + src] = state.recv_blocks[src * local + e];
      to_index[e * ep + src] = src * local + e;
    }
  }
  return MoveBlocks(rows, sizes, to_index);
}

void AllToAllDispatcher::StartDispatch(const Tensor& x_TH, const Tensor& ids_TK,
                                       const Tensor& weights_TK, int64_t pad_capacity,
                                       State* state) const {
  MOE_CHECK(x_TH.ndim() == 2 && ids_TK.ndim() == 2 && ids_TK.dim(0) == x_TH.dim(0) &&
            weights_TK.shape() == ids_TK.shape())
      << "AllToAllDispatcher: x " << x_TH.Describe() << ", ids " << ids_TK.Describe()
      << " and weights " << weights_TK.Describe() << " must be [T, H], [T, K], [T, K]";
  const int64_t ep = ep_size(), local = num_local_experts();
  state->num_tokens = x_TH.dim(0);
  state->weights_TK = weights_TK;
  state->permutation = BuildPermutation(ids_TK, num_experts_);
  if (pad_capacity > 0) state->permutation = PadToCapacity(state->permutation, pad_capacity);
  const Permutation& p = state->permutation;
  state->send_counts.assign(static_cast<size_t>(ep), 0);
  for (int64_t r = 0; r < ep; ++r) {
    state->send_counts[r] = p.expert_offsets[(r + 1) * local] - p.expert_offsets[r * local];
  }
  // Each receiver needs the [source][local expert] block sizes to sort what
  // arrives: a small exchange of the per-expert counts, waited at once.
  if (ep == 1) {
    state->recv_blocks.resize(static_cast<size_t>(local));
    for (int64_t e = 0; e < local; ++e) state->recv_blocks[e] = p.expert_rows(e);
    state->recv_counts = state->send_counts;
  } else {
    Tensor counts = Tensor::Empty({num_experts_}, DType::kI64);
    for (int64_t e = 0; e < num_experts_; ++e) counts.data<int64_t>()[e] = p.expert_rows(e);
    Tensor blocks;
    std::vector<int64_t> per_rank;
    ep_->AllToAllV(&blocks, &per_rank, counts, std::vector<int64_t>(ep, local))->Wait();
    state->recv_blocks.assign(blocks.data<int64_t>(), blocks.data<int64_t>() + ep * local);
    state->recv_counts.assign(static_cast<size_t>(ep), 0);
    for (int64_t src = 0; src < ep; ++src) {
      for (int64_t e = 0; e < local; ++e) {
        state->recv_counts[src] += state->recv_blocks[src * local + e];
      }
    }
  }
  StartExchange(PermuteRows(x_TH, p), state->send_counts, *state);
}

ExpertInput AllToAllDispatcher::FinishDispatch(State* state) const {
  const int64_t ep = ep_size(), local = num_local_experts();
  ExpertInput in;
  in.rows_RH = SortByLocalExpert(FinishExchange(*state), *state);
  in.expert_offsets.assign(static_cast<size_t>(local) + 1, 0);
  for (int64_t e = 0; e < local; ++e) {
    int64_t rows = 0;
    for (int64_t src = 0; src < ep; ++src) rows += state->recv_blocks[src * local + e];
    in.expert_offsets[e + 1] = in.expert_offsets[e] + rows;
  }
  return in;
}

void AllToAllDispatcher::StartCombine(const Tensor& out_RH, State* state) const {
  StartExchange(UnsortByLocalExpert(out_RH, *state), state->recv_counts, *state);
}

Tensor AllToAllDispatcher::FinishCombine(State* state) const {
  state->out_RH = FinishExchange(*state);
  return UnpermuteSum(state->out_RH, state->permutation, state->weights_TK);
}

void AllToAllDispatcher::StartCombineBackward(const Tensor& dy_TH, const State& state) const {
  MOE_CHECK(state.out_RH.defined())
      << "AllToAllDispatcher: backward needs the State of a finished forward";
  StartExchange(PermuteRows(dy_TH, state.permutation, state.weights_TK), state.send_counts, state);
  // d weights needs only local data: compute it while the rows travel.
  state.pending_dweights = RowDots(dy_TH, state.out_RH, state.permutation);
}

Tensor AllToAllDispatcher::FinishCombineBackward(const State& state, Tensor* dweights_TK) const {
  *dweights_TK = std::move(state.pending_dweights);
  state.pending_dweights = Tensor();
  return SortByLocalExpert(FinishExchange(state), state);
}

void AllToAllDispatcher::StartDispatchBackward(const Tensor& drows_RH, const State& state) const {
  StartExchange(UnsortByLocalExpert(drows_RH, state), state.recv_counts, state);
}

Tensor AllToAllDispatcher::FinishDispatchBackward(const State& state) const {
  return UnpermuteSum(FinishExchange(state), state.permutation);
}

}  // namespace moe
