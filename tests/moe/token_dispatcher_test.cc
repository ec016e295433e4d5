// The token dispatchers under mpirun (1, 2, 4 ranks; tests/moe/CMakeLists.txt)
// against the single-rank grouped experts every rank computes on its own
// tokens with every expert: forward output, d x, d weights, and each local
// expert's weight gradients (the reference summed over ranks, since an
// expert's gradient collects every rank's tokens). kF64 with a 1e-12 bound:
// the dispatchers only move rows and change summation order.
//
// Cases cover both dispatchers, dropless and capacity (drop by probability
// and by position, and padded to capacity), an expert no rank routes to, all
// tokens on one expert, unrouted top-p-style slots, and (all-to-all) a rank
// that holds no token at all.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/philox.h"
#include "moe/capacity.h"
#include "moe/grouped_experts.h"
#include "moe/token_dispatcher.h"
#include "tests/parallel/mpi_test_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomTensor;
using testing::World;

constexpr int64_t kHidden = 6;
constexpr int64_t kInter = 5;
constexpr double kTol = 1e-12;

enum class Ids { kRandom, kAllOnExpert1, kNeverLastExpert, kSomeUnrouted };

struct Case {
  const char* name;
  DispatcherType type;
  int64_t experts_per_rank;
  int64_t top_k;
  int64_t tokens;  // per rank
  Ids ids;
  double capacity_factor = 0;  // 0: dropless
  DropPolicy policy = DropPolicy::kProbs;
  bool pad = false;
  bool empty_rank_1 = false;  // rank 1 holds no token
};

// Distinct experts per token, drawn from Philox so every rank's draw differs.
Tensor MakeIds(const Case& c, int64_t tokens, int64_t experts, int rank) {
  Tensor ids = Tensor::Empty({tokens, c.top_k}, DType::kI32);
  Philox rng(1000 + static_cast<uint64_t>(rank), 7);
  int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int32_t> pool;
    const int64_t usable = c.ids == Ids::kNeverLastExpert ? experts - 1 : experts;
    for (int32_t e = 0; e < usable; ++e) pool.push_back(e);
    for (int64_t j = 0; j < c.top_k; ++j) {
      const auto pick = static_cast<size_t>(rng.Uniform(static_cast<uint64_t>(t * 16 + j)) *
                                            static_cast<double>(pool.size()));
      const size_t index = std::min(pick, pool.size() - 1);
      id[t * c.top_k + j] = pool[index];
      pool.erase(pool.begin() + static_cast<int64_t>(index));
    }
    if (c.ids == Ids::kAllOnExpert1) {
      id[t * c.top_k] = 1;
      for (int64_t j = 1; j < c.top_k; ++j) id[t * c.top_k + j] = kUnrouted;
    }
    if (c.ids == Ids::kSomeUnrouted) {
      // Token t uses 1 + t % K slots; the rest are unused, as top-p leaves them.
      for (int64_t j = 1 + t % c.top_k; j < c.top_k; ++j) id[t * c.top_k + j] = kUnrouted;
    }
  }
  return ids;
}

void FillExperts(GroupedExperts* experts, int64_t first) {
  for (int64_t e = 0; e < experts->num_experts(); ++e) {
    const uint64_t g = static_cast<uint64_t>(first + e);
    experts->w1(e).value.CopyFrom(RandomTensor({kInter, kHidden}, DType::kF64, 10 + 3 * g, 0.5));
    experts->w2(e).value.CopyFrom(RandomTensor({kHidden, kInter}, DType::kF64, 11 + 3 * g, 0.5));
    experts->w3(e).value.CopyFrom(RandomTensor({kInter, kHidden}, DType::kF64, 12 + 3 * g, 0.5));
  }
}

Tensor SumOverWorld(const Tensor& t) {
  Tensor sum = t.Clone();
  World().AllReduceSync(sum, ReduceOp::kSum);
  return sum;
}

void RunCase(const Case& c) {
  SCOPED_TRACE(c.name);
  const int rank = World().rank();
  const int ep = World().size();
  const int64_t experts = c.experts_per_rank * ep;
  const int64_t tokens = (c.empty_rank_1 && rank == 1) ? 0 : c.tokens;
  std::unique_ptr<TokenDispatcher> dispatcher = MakeTokenDispatcher(c.type, experts, &World());
  ASSERT_EQ(dispatcher->num_local_experts(), c.experts_per_rank);

  GroupedExperts full("ref", experts, kHidden, kInter, DType::kF64);
  FillExperts(&full, 0);
  GroupedExperts mine("mine", c.experts_per_rank, kHidden, kInter, DType::kF64, Device::kCpu,
                      dispatcher->first_local_expert());
  FillExperts(&mine, dispatcher->first_local_expert());

  const Tensor x = RandomTensor({tokens, kHidden}, DType::kF64, 200 + rank);
  Tensor weights = RandomTensor({tokens, c.top_k}, DType::kF64, 300 + rank);
  for (int64_t i = 0; i < weights.numel(); ++i) {
    weights.data<double>()[i] = 0.1 + std::abs(weights.data<double>()[i]);
  }
  Tensor ids = MakeIds(c, tokens, experts, rank);
  int64_t capacity = 0;
  if (c.capacity_factor > 0) {
    std::vector<double> dropped;
    capacity = ExpertCapacity(tokens, c.top_k, experts, c.capacity_factor);
    ids = DropOverCapacity(ids, weights, experts, capacity, c.policy, &dropped);
  }
  const Tensor dy = RandomTensor({tokens, kHidden}, DType::kF64, 400 + rank);

  // Reference: every expert on this rank's tokens.
  GroupedExperts::Saved ref_saved;
  const Tensor y_ref = full.Forward(x, ids, weights, &ref_saved);
  const GroupedExperts::Grads ref = full.Backward(dy, ref_saved);

  // Dispatched.
  TokenDispatcher::State state;
  dispatcher->StartDispatch(x, ids, weights, c.pad ? capacity : 0, &state);
  const ExpertInput in = dispatcher->FinishDispatch(&state);
  if (c.pad) {
    for (int64_t e = 0; e < c.experts_per_rank; ++e) {
      EXPECT_EQ(in.expert_offsets[e + 1] - in.expert_offsets[e], capacity * ep)
          << "padded expert " << e << " must get capacity rows from every rank";
    }
  }
  GroupedExperts::RowsSaved rows_saved;
  const Tensor out = mine.ForwardRows(in.rows_RH, in.expert_offsets, &rows_saved);
  dispatcher->StartCombine(out, &state);
  const Tensor y = dispatcher->FinishCombine(&state);
  dispatcher->StartCombineBackward(dy, state);
  Tensor dweights;
  const Tensor dout = dispatcher->FinishCombineBackward(state, &dweights);
  const Tensor drows = mine.BackwardRows(dout, in.rows_RH, in.expert_offsets, rows_saved);
  dispatcher->StartDispatchBackward(drows, state);
  const Tensor dx = dispatcher->FinishDispatchBackward(state);

  ASSERT_EQ(y.shape(), y_ref.shape());
  EXPECT_LE(MaxRelativeError(y, y_ref), kTol);
  EXPECT_LE(MaxRelativeError(dx, ref.dx_TH), kTol);
  EXPECT_LE(MaxRelativeError(dweights, ref.dweights_TK), kTol);
  // An expert's gradient collects the tokens of every rank.
  const Tensor dw1 = SumOverWorld(full.w1_grad_EIH());
  const Tensor dw2 = SumOverWorld(full.w2_grad_EHI());
  const Tensor dw3 = SumOverWorld(full.w3_grad_EIH());
  for (int64_t e = 0; e < c.experts_per_rank; ++e) {
    const int64_t g = dispatcher->first_local_expert() + e;
    SCOPED_TRACE("expert " + std::to_string(g));
    EXPECT_LE(MaxRelativeError(mine.w1(e).grad, dw1.Slice(g, g + 1).Reshape({kInter, kHidden})),
              kTol);
    EXPECT_LE(MaxRelativeError(mine.w2(e).grad, dw2.Slice(g, g + 1).Reshape({kHidden, kInter})),
              kTol);
    EXPECT_LE(MaxRelativeError(mine.w3(e).grad, dw3.Slice(g, g + 1).Reshape({kInter, kHidden})),
              kTol);
  }
}

class DispatcherTest : public ::testing::TestWithParam<DispatcherType> {};

TEST_P(DispatcherTest, Dropless) { RunCase({"dropless", GetParam(), 2, 2, 13, Ids::kRandom}); }
TEST_P(DispatcherTest, TopOne) { RunCase({"top1", GetParam(), 3, 1, 9, Ids::kRandom}); }
TEST_P(DispatcherTest, ExpertWithNoTokenOnAnyRank) {
  RunCase({"never last expert", GetParam(), 3, 2, 11, Ids::kNeverLastExpert});
}
TEST_P(DispatcherTest, AllTokensOnOneExpert) {
  RunCase({"all on expert 1", GetParam(), 2, 2, 10, Ids::kAllOnExpert1});
}
TEST_P(DispatcherTest, VariableExpertsPerToken) {
  RunCase({"unrouted slots", GetParam(), 3, 3, 12, Ids::kSomeUnrouted});
}
TEST_P(DispatcherTest, CapacityDropByProbs) {
  RunCase({"drop probs", GetParam(), 2, 2, 16, Ids::kRandom, 0.5, DropPolicy::kProbs});
}
TEST_P(DispatcherTest, CapacityDropByPosition) {
  RunCase({"drop position", GetParam(), 2, 2, 16, Ids::kAllOnExpert1, 1.0, DropPolicy::kPosition});
}

INSTANTIATE_TEST_SUITE_P(Both, DispatcherTest,
                         ::testing::Values(DispatcherType::kAllToAll, DispatcherType::kAllGather),
                         [](const ::testing::TestParamInfo<DispatcherType>& param_info) {
                           return std::string(DispatcherTypeName(param_info.param));
                         });

TEST(AllToAllDispatcher, PaddedToCapacity) {
  RunCase({"pad", DispatcherType::kAllToAll, 2, 2, 14, Ids::kRandom, 0.75, DropPolicy::kProbs,
           /*pad=*/true});
}

TEST(AllToAllDispatcher, RankWithNoTokens) {
  if (World().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  RunCase({"empty rank", DispatcherType::kAllToAll, 2, 2, 9, Ids::kRandom, 0, DropPolicy::kProbs,
           false, /*empty_rank_1=*/true});
}

TEST(TokenDispatcher, ExpertsNotDivisibleByEpDie) {
  if (World().size() < 2) GTEST_SKIP() << "needs 2 ranks";
  EXPECT_DEATH(MakeTokenDispatcher(DispatcherType::kAllToAll, 2 * World().size() + 1, &World()),
               "cannot be split evenly over .* expert-parallel ranks");
}

}  // namespace
}  // namespace moe
