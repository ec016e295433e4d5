// The rank grid with MoE parallel folding: which ranks form each process
// group. Pure computation, no MPI: the communicator layer splits its world
// communicator by the (color, key) pairs given here, so that no layer ever
// computes ranks by itself.
//
// Dense (attention) layers see the world as TP x CP x DP x PP, expert layers
// see the same ranks as ETP x EP x EDP x PP with the same PP, TP (ETP)
// fastest-varying. This is Megatron-Core's RankGenerator with order
// "tp-cp-ep-dp-pp": the decoder generator has ep = 1, the expert generator
// cp = 1, so
//   rank = tp_rank  + TP  * (cp_rank + CP * (dp_rank  + DP  * pp_rank))
//        = etp_rank + ETP * (ep_rank + EP * (edp_rank + EDP * pp_rank)).
// Every group is listed in ascending rank order, and groups of one kind are
// numbered as Megatron lists them (the color below).
#ifndef MOE_PARALLEL_RANK_GRID_H_
#define MOE_PARALLEL_RANK_GRID_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// Megatron-LM's --tensor_model_parallel_size, --context_parallel_size,
// --pipeline_model_parallel_size, --expert_model_parallel_size and
// --expert_tensor_parallel_size. DP and EDP are derived from the world size.
struct ParallelSizes {
  int tp = 1;
  int cp = 1;
  int pp = 1;
  int ep = 1;
  int etp = 1;
};

// What the grid must divide in the model and the batch. A field left at 0 is
// not checked (a grid built for a communicator test has no model); negative
// values are errors.
struct GridRequirements {
  int64_t num_attention_heads = 0;
  int64_t num_query_groups = 0;  // Hugging Face's num_key_value_heads
  int64_t num_experts = 0;
  int64_t ffn_hidden_size = 0;  // split over TP in dense MLPs, over ETP in experts
  int64_t global_batch_size = 0;
  int64_t micro_batch_size = 0;
};

// One kind of process group: the ranks that differ only along some axes of
// one grid. Names follow Megatron-Core where it has one.
enum class GroupKind {
  kTp,                   // tensor parallel
  kCp,                   // context parallel
  kDp,                   // data parallel (the data loader's shards)
  kPp,                   // pipeline stages (the same in both grids)
  kTpCp,                 // context-parallel attention over TP x CP
  kDpCp,                 // gradient reduction of dense parameters
  kTpDpCp,               // all ranks of one pipeline stage
  kModelParallel,        // TP x PP: the ranks holding one model replica
  kEtp,                  // expert tensor parallel
  kEp,                   // expert parallel (the all-to-all group)
  kEdp,                  // expert data parallel: expert gradient reduction
  kEtpEp,                // expert tensor x expert parallel
  kExpertModelParallel,  // ETP x EP x PP
};
inline constexpr std::array<GroupKind, 13> kAllGroupKinds = {GroupKind::kTp,
                                                             GroupKind::kCp,
                                                             GroupKind::kDp,
                                                             GroupKind::kPp,
                                                             GroupKind::kTpCp,
                                                             GroupKind::kDpCp,
                                                             GroupKind::kTpDpCp,
                                                             GroupKind::kModelParallel,
                                                             GroupKind::kEtp,
                                                             GroupKind::kEp,
                                                             GroupKind::kEdp,
                                                             GroupKind::kEtpEp,
                                                             GroupKind::kExpertModelParallel};

// "tp", "dp-cp", "etp-ep-pp", ...: the name printed by Describe().
const char* GroupKindName(GroupKind kind);

// A rank's position on both grids. pp is shared.
struct RankCoords {
  int tp = 0, cp = 0, dp = 0, pp = 0;
  int etp = 0, ep = 0, edp = 0;
};

// Arguments of MPI_Comm_split / ncclCommSplit: ranks with the same color
// form one group, ordered by key (the rank's index in the sorted group).
struct SplitColor {
  int color = 0;
  int key = 0;
};

class RankGrid {
 public:
  // Validates every rule before building anything; the error names the
  // failing rule with its numbers and the values that would work.
  static absl::StatusOr<RankGrid> Create(int world_size, const ParallelSizes& sizes,
                                         const GridRequirements* requirements = nullptr);

  int world_size() const { return world_size_; }
  const ParallelSizes& sizes() const { return sizes_; }
  int dp() const { return dp_; }
  int edp() const { return edp_; }

  RankCoords Coords(int rank) const;
  // Which data-parallel shard of every global batch `rank` reads: TP and CP
  // peers read the same samples (CP splits their sequence, TP their layers).
  int DataParallelRank(int rank) const { return Coords(rank).dp; }

  // Number of ranks in each group of `kind`, and number of such groups.
  int GroupSize(GroupKind kind) const;
  int NumGroups(GroupKind kind) const { return world_size_ / GroupSize(kind); }
  // The group of `kind` that holds `rank`, ascending.
  std::vector<int> Group(GroupKind kind, int rank) const;
  // Every group of `kind`, in Megatron-Core's order: AllGroups(k)[c] is the
  // group of color c.
  std::vector<std::vector<int>> AllGroups(GroupKind kind) const;
  SplitColor Color(GroupKind kind, int rank) const;

  // The table `moe-train --print_grid` prints: sizes, then one line per rank
  // with its coordinates and groups.
  std::string Describe() const;

 private:
  RankGrid(int world_size, const ParallelSizes& sizes);

  // Axis sizes from fastest to slowest: {tp, cp, dp, pp} or {etp, ep, edp, pp}.
  const std::array<int, 4>& Axes(GroupKind kind) const;
  void CheckRank(int rank) const;

  int world_size_ = 1;
  ParallelSizes sizes_;
  int dp_ = 1;
  int edp_ = 1;
  std::array<int, 4> dense_axes_{};
  std::array<int, 4> expert_axes_{};
};

}  // namespace moe

#endif  // MOE_PARALLEL_RANK_GRID_H_
