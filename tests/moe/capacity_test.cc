// Expert capacity and dropping on hand-worked examples (Megatron-Core's rules).
#include "moe/capacity.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "moe/permutation.h"

namespace moe {
namespace {

Tensor I32(int64_t rows, int64_t cols, const std::vector<int32_t>& values) {
  Tensor t = Tensor::Empty({rows, cols}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

Tensor F32(int64_t rows, int64_t cols, const std::vector<float>& values) {
  Tensor t = Tensor::Empty({rows, cols}, DType::kF32);
  for (size_t i = 0; i < values.size(); ++i) t.data<float>()[i] = values[i];
  return t;
}

std::vector<int32_t> Values(const Tensor& ids) {
  return std::vector<int32_t>(ids.data<int32_t>(), ids.data<int32_t>() + ids.numel());
}

TEST(ExpertCapacityTest, CeilOfTokensTimesKOverExpertsTimesFactor) {
  EXPECT_EQ(ExpertCapacity(10, 2, 4, 1.0), 5);    // 20 / 4
  EXPECT_EQ(ExpertCapacity(10, 2, 4, 1.1), 6);    // 5.5 -> 6
  EXPECT_EQ(ExpertCapacity(7, 1, 8, 0.5), 1);     // 0.4375 -> 1
  EXPECT_EQ(ExpertCapacity(0, 2, 8, 1.0), 1);     // never 0
  EXPECT_EQ(ExpertCapacity(16, 4, 8, 1.25), 10);  // 8 * 1.25
}

// Five tokens, top-2, three experts, capacity 2. Expert 0 is chosen by
// tokens 0, 1, 3, 4 (weights .6 .3 .9 .3), expert 1 by 0, 2 (fits), expert 2
// by 1, 2, 3, 4 (weights .7 .5 .1 .7).
const std::vector<int32_t> kIds = {0, 1, 2, 0, 1, 2, 0, 2, 0, 2};
const std::vector<float> kWeights = {.6f, .4f, .7f, .3f, .5f, .5f, .9f, .1f, .3f, .7f};

TEST(DropOverCapacityTest, ByProbsKeepsTheHeaviestPairsTiesToTheEarlierToken) {
  std::vector<double> dropped;
  const Tensor ids =
      DropOverCapacity(I32(5, 2, kIds), F32(5, 2, kWeights), 3, 2, DropPolicy::kProbs, &dropped);
  // Expert 0 keeps tokens 3 (.9) and 0 (.6); tokens 1 and 4 (.3 each) go.
  // Expert 2 keeps tokens 1 and 4 (.7 each, the earlier first); 2 and 3 go.
  EXPECT_EQ(Values(ids),
            (std::vector<int32_t>{0, 1, 2, kUnrouted, 1, kUnrouted, 0, kUnrouted, kUnrouted, 2}));
  EXPECT_EQ(dropped, (std::vector<double>{2, 0, 2}));
}

// Weights that differ by rounding noise (an ulp, as the same token's weight
// computed under two layouts) are a tie, which goes to the earlier token, so
// the layout never decides a drop; a difference of 1e-5 still decides it.
TEST(DropOverCapacityTest, ByProbsTreatsRoundingNoiseAsATie) {
  std::vector<double> dropped;
  const float w = 0.4f, w_up = std::nextafter(w, 1.0f);
  // One expert, capacity 1, three tokens: token 0 and 2 at w, token 1 an ulp above.
  Tensor kept = DropOverCapacity(I32(3, 1, {0, 0, 0}), F32(3, 1, {w, w_up, w}), 1, 1,
                                 DropPolicy::kProbs, &dropped);
  EXPECT_EQ(Values(kept), (std::vector<int32_t>{0, kUnrouted, kUnrouted}));
  kept = DropOverCapacity(I32(3, 1, {0, 0, 0}), F32(3, 1, {w, w + 1e-5f, w}), 1, 1,
                          DropPolicy::kProbs, &dropped);
  EXPECT_EQ(Values(kept), (std::vector<int32_t>{kUnrouted, 0, kUnrouted}));
  EXPECT_EQ(dropped, (std::vector<double>{4}));
}

TEST(DropOverCapacityTest, ByPositionKeepsTheFirstPairsInTokenOrder) {
  std::vector<double> dropped;
  const Tensor ids =
      DropOverCapacity(I32(5, 2, kIds), F32(5, 2, kWeights), 3, 2, DropPolicy::kPosition, &dropped);
  EXPECT_EQ(Values(ids),
            (std::vector<int32_t>{0, 1, 2, 0, 1, 2, kUnrouted, kUnrouted, kUnrouted, kUnrouted}));
  EXPECT_EQ(dropped, (std::vector<double>{2, 0, 2}));
}

TEST(DropOverCapacityTest, UnroutedSlotsAreLeftAloneAndNothingDropsUnderCapacity) {
  std::vector<double> dropped;
  const Tensor ids =
      DropOverCapacity(I32(2, 2, {1, kUnrouted, 1, 0}), F32(2, 2, {.5f, 0, .5f, .5f}), 2, 2,
                       DropPolicy::kProbs, &dropped);
  EXPECT_EQ(Values(ids), (std::vector<int32_t>{1, kUnrouted, 1, 0}));
  EXPECT_EQ(dropped, (std::vector<double>{0, 0}));
}

TEST(DropOverCapacityTest, PoliciesParseAndBadNamesAreNamed) {
  EXPECT_EQ(*ParseDropPolicy("probs"), DropPolicy::kProbs);
  EXPECT_EQ(*ParseDropPolicy("position"), DropPolicy::kPosition);
  const absl::StatusOr<DropPolicy> bad = ParseDropPolicy("random");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--moe_token_drop_policy=random"), std::string::npos);
}

TEST(DropOverCapacityDeathTest, IdsOutsideTheExpertsDie) {
  std::vector<double> dropped;
  EXPECT_DEATH(DropOverCapacity(I32(1, 1, {5}), F32(1, 1, {1}), 3, 1, DropPolicy::kProbs, &dropped),
               "expert id 5 outside \\[0, 3\\)");
}

}  // namespace
}  // namespace moe
