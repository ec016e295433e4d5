// RankGrid: hand-worked groups on small worlds, structural properties for
// every valid layout of 1..16 ranks, and one clear message per broken rule.
// rank_grid_reference.py checks the same groups against Megatron-Core.
#include "parallel/rank_grid.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Groups = std::vector<std::vector<int>>;

RankGrid MakeGrid(int world, ParallelSizes sizes, const GridRequirements* req = nullptr) {
  absl::StatusOr<RankGrid> grid = RankGrid::Create(world, sizes, req);
  EXPECT_TRUE(grid.ok()) << grid.status();
  return *std::move(grid);
}

TEST(RankGridTest, Tp2Dp4) {
  const RankGrid grid = MakeGrid(8, {.tp = 2});
  EXPECT_EQ(grid.dp(), 4);
  EXPECT_EQ(grid.AllGroups(GroupKind::kTp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kDp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kDpCp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kPp), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kCp).size(), 8u);
  const RankCoords c = grid.Coords(5);
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 2);
  EXPECT_EQ(c.pp, 0);
  EXPECT_EQ(grid.DataParallelRank(5), 2);
  // ETP = EP = 1: every expert-grid rank is its own EP group, EDP spans all.
  EXPECT_EQ(grid.edp(), 8);
  EXPECT_THAT(grid.Group(GroupKind::kEdp, 3), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
}

TEST(RankGridTest, Tp2Pp2Dp2) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .pp = 2});
  EXPECT_EQ(grid.AllGroups(GroupKind::kTp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kDp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kPp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kModelParallel), (Groups{{0, 1, 4, 5}, {2, 3, 6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kTpDpCp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  const RankCoords c = grid.Coords(6);
  EXPECT_EQ(c.tp, 0);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.pp, 1);
}

TEST(RankGridTest, Tp2Cp2Dp2) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .cp = 2});
  EXPECT_EQ(grid.AllGroups(GroupKind::kCp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kTpCp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kDp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kDpCp), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  // CP peers read the same samples (they split the sequence).
  EXPECT_EQ(grid.DataParallelRank(0), grid.DataParallelRank(2));
  EXPECT_EQ(grid.DataParallelRank(4), 1);
}

TEST(RankGridTest, Ep4FoldedOverTp2Dp4) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .ep = 4, .etp = 1});
  EXPECT_EQ(grid.edp(), 2);
  EXPECT_EQ(grid.AllGroups(GroupKind::kEtp), (Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEdp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // The same rank 5 is TP rank 1 / DP rank 2 for attention and EP rank 1 /
  // EDP rank 1 for its experts.
  const RankCoords c = grid.Coords(5);
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 2);
  EXPECT_EQ(c.etp, 0);
  EXPECT_EQ(c.ep, 1);
  EXPECT_EQ(c.edp, 1);
}

TEST(RankGridTest, Etp2Ep2OverTp2Dp4) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .ep = 2, .etp = 2});
  EXPECT_EQ(grid.AllGroups(GroupKind::kEtp), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEp), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEdp), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEtpEp), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
}

TEST(RankGridTest, Ep4WithPipelineOn16Ranks) {
  // TP 2 x DP 4 x PP 2 folded as ETP 1 x EP 4 x EDP 2 x PP 2.
  const RankGrid grid = MakeGrid(16, {.tp = 2, .pp = 2, .ep = 4});
  EXPECT_EQ(grid.AllGroups(GroupKind::kPp),
            (Groups{{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}}));
  EXPECT_EQ(grid.AllGroups(GroupKind::kEp),
            (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}));
  EXPECT_THAT(grid.Group(GroupKind::kExpertModelParallel, 13),
              ElementsAre(4, 5, 6, 7, 12, 13, 14, 15));
  EXPECT_THAT(grid.Group(GroupKind::kEdp, 13), ElementsAre(9, 13));
}

TEST(RankGridTest, ColorIsMegatronGroupIndexAndKeyIsPositionInGroup) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .pp = 2});
  const SplitColor c = grid.Color(GroupKind::kDp, 5);  // dp group {5, 7}
  EXPECT_EQ(c.color, 3);
  EXPECT_EQ(c.key, 0);
  EXPECT_EQ(grid.Color(GroupKind::kPp, 7).color, 3);  // pp group {3, 7}
  EXPECT_EQ(grid.Color(GroupKind::kPp, 7).key, 1);
}

// Every (TP, CP, PP, EP, ETP) that makes a valid grid on `world` ranks.
std::vector<ParallelSizes> ValidLayouts(int world) {
  std::vector<ParallelSizes> out;
  auto divisors = [](int n) {
    std::vector<int> d;
    for (int i = 1; i <= n; ++i) {
      if (n % i == 0) d.push_back(i);
    }
    return d;
  };
  for (int tp : divisors(world)) {
    for (int cp : divisors(world / tp)) {
      for (int pp : divisors(world / tp / cp)) {
        const int stage = world / pp;
        for (int ep : divisors(stage)) {
          for (int etp : divisors(stage / ep)) out.push_back({tp, cp, pp, ep, etp});
        }
      }
    }
  }
  return out;
}

TEST(RankGridTest, PropertiesOfEveryValidLayoutUpTo16Ranks) {
  int layouts = 0;
  for (int world = 1; world <= 16; ++world) {
    for (const ParallelSizes& s : ValidLayouts(world)) {
      ++layouts;
      const RankGrid grid = MakeGrid(world, s);
      SCOPED_TRACE(::testing::Message() << "world " << world << " tp " << s.tp << " cp " << s.cp
                                        << " pp " << s.pp << " ep " << s.ep << " etp " << s.etp);
      ASSERT_EQ(s.tp * s.cp * grid.dp() * s.pp, world);
      ASSERT_EQ(s.etp * s.ep * grid.edp() * s.pp, world);
      for (GroupKind kind : kAllGroupKinds) {
        SCOPED_TRACE(GroupKindName(kind));
        const Groups groups = grid.AllGroups(kind);
        ASSERT_EQ(static_cast<int>(groups.size()) * grid.GroupSize(kind), world);
        std::vector<int> seen(world, 0);
        for (size_t color = 0; color < groups.size(); ++color) {
          const std::vector<int>& g = groups[color];
          ASSERT_EQ(static_cast<int>(g.size()), grid.GroupSize(kind));
          ASSERT_TRUE(std::is_sorted(g.begin(), g.end()));
          for (size_t key = 0; key < g.size(); ++key) {
            ++seen[g[key]];
            EXPECT_EQ(grid.Group(kind, g[key]), g);
            const SplitColor sc = grid.Color(kind, g[key]);
            EXPECT_EQ(sc.color, static_cast<int>(color));
            EXPECT_EQ(sc.key, static_cast<int>(key));
          }
        }
        EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), world) << "each rank in one group";
      }
      EXPECT_EQ(grid.GroupSize(GroupKind::kTp), s.tp);
      EXPECT_EQ(grid.GroupSize(GroupKind::kCp), s.cp);
      EXPECT_EQ(grid.GroupSize(GroupKind::kDp), grid.dp());
      EXPECT_EQ(grid.GroupSize(GroupKind::kPp), s.pp);
      EXPECT_EQ(grid.GroupSize(GroupKind::kDpCp), grid.dp() * s.cp);
      EXPECT_EQ(grid.GroupSize(GroupKind::kEtp), s.etp);
      EXPECT_EQ(grid.GroupSize(GroupKind::kEp), s.ep);
      EXPECT_EQ(grid.GroupSize(GroupKind::kEdp), grid.edp());
      for (int rank = 0; rank < world; ++rank) {
        const RankCoords c = grid.Coords(rank);
        EXPECT_EQ(c.tp + s.tp * (c.cp + s.cp * (c.dp + grid.dp() * c.pp)), rank);
        EXPECT_EQ(c.etp + s.etp * (c.ep + s.ep * (c.edp + grid.edp() * c.pp)), rank);
        // TP (and ETP) groups are runs of consecutive ranks.
        const std::vector<int> tp = grid.Group(GroupKind::kTp, rank);
        EXPECT_EQ(tp.back() - tp.front() + 1, s.tp);
        const std::vector<int> etp = grid.Group(GroupKind::kEtp, rank);
        EXPECT_EQ(etp.back() - etp.front() + 1, s.etp);
        // Members of a group agree on every coordinate outside the group.
        for (int peer : grid.Group(GroupKind::kDp, rank)) {
          EXPECT_EQ(grid.Coords(peer).tp, c.tp);
          EXPECT_EQ(grid.Coords(peer).cp, c.cp);
          EXPECT_EQ(grid.Coords(peer).pp, c.pp);
        }
        // Both grids share PP: one pipeline stage is the same set of ranks,
        // whether cut as TP x CP x DP or as ETP x EP x EDP.
        std::set<int> stage;
        for (int peer : grid.Group(GroupKind::kEdp, rank)) {
          for (int q : grid.Group(GroupKind::kEtpEp, peer)) stage.insert(q);
        }
        const std::vector<int> dense_stage = grid.Group(GroupKind::kTpDpCp, rank);
        EXPECT_EQ(std::vector<int>(stage.begin(), stage.end()), dense_stage);
        EXPECT_EQ(rank / (world / s.pp), c.pp);
      }
    }
  }
  EXPECT_GT(layouts, 500);
}

struct BadCase {
  int world;
  ParallelSizes sizes;
  GridRequirements req;
  std::vector<std::string> expected;  // substrings of the message
};

TEST(RankGridTest, EveryInvalidConfigurationNamesItsRuleAndAFix) {
  const GridRequirements none{};
  const std::vector<BadCase> cases = {
      {0, {}, none, {"world_size=0 must be at least 1"}},
      {8, {.tp = 0}, none, {"--tensor_model_parallel_size=0 must be at least 1"}},
      {8, {.cp = -2}, none, {"--context_parallel_size=-2 must be at least 1"}},
      {8, {.pp = 0}, none, {"--pipeline_model_parallel_size=0"}},
      {8, {.ep = 0}, none, {"--expert_model_parallel_size=0"}},
      {8, {.etp = 0}, none, {"--expert_tensor_parallel_size=0"}},
      {8,
       {.tp = 3},
       none,
       {"world_size=8 is not divisible by TP*CP*PP = 3*1*1 = 3",
        "valid --tensor_model_parallel_size with the other sizes unchanged: 1, 2, 4, 8"}},
      {8,
       {.tp = 2, .cp = 2, .pp = 4},
       none,
       {"TP*CP*PP = 2*2*4 = 16",
        "valid --tensor_model_parallel_size with the other sizes "
        "unchanged: 1;",
        "valid --context_parallel_size with the other sizes unchanged: 1;",
        "valid --pipeline_model_parallel_size with the other sizes unchanged: 1, 2"}},
      {12,
       {.tp = 2, .ep = 8},
       none,
       {"ETP*EP = 1*8 = 8 does not divide TP*CP*DP = 2*1*6 = 12",
        "valid --expert_model_parallel_size with the other sizes unchanged: 1, 2, 3, 4, 6, 12"}},
      {8,
       {.tp = 2, .pp = 2, .ep = 4, .etp = 2},
       none,
       {"ETP*EP = 2*4 = 8 does not divide TP*CP*DP = 2*1*2 = 4",
        "valid --expert_model_parallel_size with the other sizes unchanged: 1, 2;",
        "valid --expert_tensor_parallel_size with the other sizes unchanged: 1"}},
      {8,
       {.tp = 8},
       {.num_attention_heads = -1},
       {"--num_attention_heads=-1 must not be negative"}},
      {8, {.tp = 8}, {.micro_batch_size = -4}, {"--micro_batch_size=-4 must not be negative"}},
      {6,
       {.tp = 3},
       {.num_attention_heads = 8},
       {"--tensor_model_parallel_size=3 does not divide --num_attention_heads=8",
        "valid --tensor_model_parallel_size with the other sizes unchanged: 1, 2"}},
      {16,
       {.tp = 16},
       {.num_attention_heads = 8},
       {"=16 does not divide --num_attention_heads=8", "unchanged: 1, 2, 4, 8"}},
      {8,
       {.tp = 4},
       {.num_attention_heads = 12, .num_query_groups = 6},
       {"--tensor_model_parallel_size=4 and --num_query_groups=6: one must divide the other",
        "unchanged: 1, 2"}},
      {6,
       {.tp = 3},
       {.num_attention_heads = 6, .num_query_groups = 2},
       {"=3 and --num_query_groups=2", "unchanged: 1, 2, 6"}},
      {8,
       {.ep = 8},
       {.num_experts = 6},
       {"--expert_model_parallel_size=8 does not divide --num_experts=6",
        "valid --expert_model_parallel_size with the other sizes unchanged: 1, 2"}},
      {8,
       {.tp = 8},
       {.ffn_hidden_size = 12},
       {"--tensor_model_parallel_size=8 does not divide --ffn_hidden_size=12", "dense MLPs",
        "unchanged: 1, 2, 4"}},
      {8,
       {.tp = 2, .ep = 2, .etp = 4},
       {.ffn_hidden_size = 6},
       {"--expert_tensor_parallel_size=4 does not divide --ffn_hidden_size=6",
        "valid --expert_tensor_parallel_size with the other sizes unchanged: 1, 2"}},
      {8,
       {.tp = 2},
       {.global_batch_size = 12, .micro_batch_size = 2},
       {"--global_batch_size=12 is not divisible by --micro_batch_size*DP = 2*4 = 8",
        "multiple of 8 (8 or 16)", "--micro_batch_size among 1, 3"}},
      {8,
       {},
       {.global_batch_size = 4, .micro_batch_size = 1},
       {"--global_batch_size=4 is not divisible by --micro_batch_size*DP = 1*8 = 8",
        "multiple of 8 (8)"}},
  };
  for (const BadCase& c : cases) {
    const absl::StatusOr<RankGrid> grid = RankGrid::Create(c.world, c.sizes, &c.req);
    ASSERT_FALSE(grid.ok()) << c.expected[0];
    EXPECT_EQ(grid.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(grid.status().message(), HasSubstr("rank grid: "));
    for (const std::string& s : c.expected) {
      EXPECT_THAT(grid.status().message(), HasSubstr(s));
    }
  }
}

TEST(RankGridTest, RequirementsThatHoldPass) {
  // Mixtral-like: 32 heads, 8 query groups, 8 experts; TP 16 > 8 groups is
  // the replicated-KV layout and is valid.
  const GridRequirements mixtral{.num_attention_heads = 32,
                                 .num_query_groups = 8,
                                 .num_experts = 8,
                                 .ffn_hidden_size = 14336,
                                 .global_batch_size = 64,
                                 .micro_batch_size = 1};
  EXPECT_TRUE(RankGrid::Create(16, {.tp = 16, .ep = 8, .etp = 2}, &mixtral).ok());
  EXPECT_TRUE(RankGrid::Create(32, {.tp = 2, .cp = 2, .pp = 2, .ep = 8}, &mixtral).ok());
  // Zero fields are not checked.
  const GridRequirements empty{};
  EXPECT_TRUE(RankGrid::Create(8, {.tp = 8}, &empty).ok());
}

TEST(RankGridTest, DescribeListsSizesCoordinatesAndGroups) {
  const RankGrid grid = MakeGrid(8, {.tp = 2, .pp = 2, .ep = 2});
  const std::string text = grid.Describe();
  EXPECT_THAT(text, HasSubstr("rank grid: 8 ranks"));
  EXPECT_THAT(text, HasSubstr("dense layers:  TP 2 x CP 1 x DP 2 x PP 2"));
  EXPECT_THAT(text, HasSubstr("expert layers: ETP 1 x EP 2 x EDP 2 x PP 2"));
  // Rank 5: tp 1, dp 0, pp 1; ep 1, edp 0.
  EXPECT_THAT(text, HasSubstr("   5    1  0  0  1     0  1   0  tp [4 5]  dp [5 7]  pp [1 5]  "
                              "tp-cp [4 5]  dp-cp [5 7]  tp-cp-dp [4-7]  tp-pp [0 1 4 5]  "
                              "ep [4 5]  edp [5 7]  etp-ep [4 5]  etp-ep-pp [0 1 4 5]\n"));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 5 + 8);
}

TEST(RankGridDeathTest, RankOutsideTheWorld) {
  const RankGrid grid = MakeGrid(4, {.tp = 2});
  EXPECT_DEATH(grid.Coords(4), "RankGrid: rank 4 is outside the world of 4 ranks");
  EXPECT_DEATH(grid.Group(GroupKind::kTp, -1), "RankGrid: rank -1");
}

}  // namespace
}  // namespace moe
