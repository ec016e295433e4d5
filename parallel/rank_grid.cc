#include "parallel/rank_grid.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/check.h"

namespace moe {
namespace {

// Bit i of a mask selects axis i of a grid, fastest first: {tp, cp, dp, pp}
// for the dense grid, {etp, ep, edp, pp} for the expert grid.
struct KindInfo {
  GroupKind kind;
  const char* name;
  bool expert;
  unsigned mask;
};
constexpr KindInfo kKindInfo[] = {
    {GroupKind::kTp, "tp", false, 0b0001},
    {GroupKind::kCp, "cp", false, 0b0010},
    {GroupKind::kDp, "dp", false, 0b0100},
    {GroupKind::kPp, "pp", false, 0b1000},
    {GroupKind::kTpCp, "tp-cp", false, 0b0011},
    {GroupKind::kDpCp, "dp-cp", false, 0b0110},
    {GroupKind::kTpDpCp, "tp-cp-dp", false, 0b0111},
    {GroupKind::kModelParallel, "tp-pp", false, 0b1001},
    {GroupKind::kEtp, "etp", true, 0b0001},
    {GroupKind::kEp, "ep", true, 0b0010},
    {GroupKind::kEdp, "edp", true, 0b0100},
    {GroupKind::kEtpEp, "etp-ep", true, 0b0011},
    {GroupKind::kExpertModelParallel, "etp-ep-pp", true, 0b1011},
};

constexpr bool KindTableMatchesEnum() {
  if (std::size(kKindInfo) != kAllGroupKinds.size()) return false;
  for (size_t i = 0; i < kAllGroupKinds.size(); ++i) {
    if (kKindInfo[i].kind != kAllGroupKinds[i] || static_cast<size_t>(kKindInfo[i].kind) != i) {
      return false;
    }
  }
  return true;
}
static_assert(KindTableMatchesEnum(), "kKindInfo must list every GroupKind in enum order");

const KindInfo& Info(GroupKind kind) { return kKindInfo[static_cast<int>(kind)]; }

using Axes4 = std::array<int, 4>;

Axes4 Strides(const Axes4& axes) {
  Axes4 stride{};
  int s = 1;
  for (int i = 0; i < 4; ++i) {
    stride[i] = s;
    s *= axes[i];
  }
  return stride;
}

Axes4 Decompose(int rank, const Axes4& axes) {
  const Axes4 stride = Strides(axes);
  Axes4 coord{};
  for (int i = 0; i < 4; ++i) coord[i] = rank / stride[i] % axes[i];
  return coord;
}

// The index of `coord` among the combinations of the axes selected by `mask`
// (first selected axis fastest): a group's color for the unselected axes, a
// rank's key inside its group for the selected ones. Megatron's
// generate_masked_orthogonal_rank_groups numbers both the same way.
int MixedRadix(const Axes4& coord, const Axes4& axes, unsigned mask) {
  int index = 0, scale = 1;
  for (int i = 0; i < 4; ++i) {
    if (!(mask & (1u << i))) continue;
    index += coord[i] * scale;
    scale *= axes[i];
  }
  return index;
}

// Inverse of MixedRadix: writes the selected axes of `coord` from `index`.
void SetFromMixedRadix(int index, const Axes4& axes, unsigned mask, Axes4* coord) {
  for (int i = 0; i < 4; ++i) {
    if (!(mask & (1u << i))) continue;
    (*coord)[i] = index % axes[i];
    index /= axes[i];
  }
}

int Compose(const Axes4& coord, const Axes4& axes) {
  const Axes4 stride = Strides(axes);
  int rank = 0;
  for (int i = 0; i < 4; ++i) rank += coord[i] * stride[i];
  return rank;
}

int MaskedProduct(const Axes4& axes, unsigned mask) {
  int p = 1;
  for (int i = 0; i < 4; ++i) {
    if (mask & (1u << i)) p *= axes[i];
  }
  return p;
}

// Ranks that share `coord` on the unselected axes, ascending: strides grow
// with the axis index, so counting the selected axes fastest-first counts up.
std::vector<int> Members(Axes4 coord, const Axes4& axes, unsigned mask) {
  const int size = MaskedProduct(axes, mask);
  std::vector<int> ranks(size);
  for (int i = 0; i < size; ++i) {
    SetFromMixedRadix(i, axes, mask, &coord);
    ranks[i] = Compose(coord, axes);
  }
  return ranks;
}

// ---- Validation --------------------------------------------------------

enum class Param { kTp, kCp, kPp, kEp, kEtp };

const char* Flag(Param p) {
  switch (p) {
    case Param::kTp:
      return "--tensor_model_parallel_size";
    case Param::kCp:
      return "--context_parallel_size";
    case Param::kPp:
      return "--pipeline_model_parallel_size";
    case Param::kEp:
      return "--expert_model_parallel_size";
    case Param::kEtp:
      return "--expert_tensor_parallel_size";
  }
  return "?";
}

int& Field(ParallelSizes& s, Param p) {
  switch (p) {
    case Param::kTp:
      return s.tp;
    case Param::kCp:
      return s.cp;
    case Param::kPp:
      return s.pp;
    case Param::kEp:
      return s.ep;
    case Param::kEtp:
      return s.etp;
  }
  return s.tp;
}

std::string Violation(int world, const ParallelSizes& s, const GridRequirements* req, bool suggest);

// The values of `p` that make the whole configuration valid, the other sizes
// unchanged: the alternative each error message offers.
std::string ValidValues(int world, ParallelSizes s, const GridRequirements* req, Param p) {
  std::vector<int> ok;
  for (int v = 1; v <= world; ++v) {
    Field(s, p) = v;
    if (Violation(world, s, req, /*suggest=*/false).empty()) ok.push_back(v);
  }
  if (ok.empty()) return absl::StrCat("no ", Flag(p), " works with the other sizes unchanged");
  return absl::StrCat("valid ", Flag(p),
                      " with the other sizes unchanged: ", absl::StrJoin(ok, ", "));
}

// Alternatives for each of `params` that is not 1 (those are the ones a user
// would change), or for the first when all are 1.
std::string Alternatives(int world, const ParallelSizes& s, const GridRequirements* req,
                         std::initializer_list<Param> params) {
  std::vector<std::string> parts;
  ParallelSizes copy = s;
  for (Param p : params) {
    if (Field(copy, p) != 1) parts.push_back(ValidValues(world, s, req, p));
  }
  if (parts.empty()) parts.push_back(ValidValues(world, s, req, *params.begin()));
  return absl::StrJoin(parts, "; ");
}

std::string BatchAlternatives(int64_t global, int64_t micro, int dp) {
  const int64_t step = micro * dp;
  const int64_t below = global / step * step;
  std::string msg = absl::StrCat("use a --global_batch_size that is a multiple of ", step, " (",
                                 below > 0 ? absl::StrCat(below, " or ") : "", below + step, ")");
  if (global % dp == 0) {
    std::vector<int64_t> micros;
    for (int64_t m = 1; m <= global / dp; ++m) {
      if (global / dp % m == 0) micros.push_back(m);
    }
    absl::StrAppend(&msg, ", or a --micro_batch_size among ", absl::StrJoin(micros, ", "));
  }
  return msg;
}

// The first rule `s` breaks, as a message; empty when valid. Rules come in
// the order a user should fix them: sizes, the grid, then the model.
std::string Violation(int world, const ParallelSizes& s, const GridRequirements* req,
                      bool suggest) {
  if (world < 1) return absl::StrCat("world_size=", world, " must be at least 1");
  for (Param p : {Param::kTp, Param::kCp, Param::kPp, Param::kEp, Param::kEtp}) {
    ParallelSizes copy = s;
    if (Field(copy, p) < 1) {
      return absl::StrCat(Flag(p), "=", Field(copy, p),
                          " must be at least 1 (1 turns this parallelism off)");
    }
  }
  auto hint = [&](std::initializer_list<Param> params) {
    return suggest ? absl::StrCat("; ", Alternatives(world, s, req, params)) : std::string();
  };

  const int64_t tcp = int64_t{s.tp} * s.cp * s.pp;
  if (world % tcp != 0) {
    return absl::StrCat("world_size=", world, " is not divisible by TP*CP*PP = ", s.tp, "*", s.cp,
                        "*", s.pp, " = ", tcp, ", so DP = world/(TP*CP*PP) is not whole",
                        hint({Param::kTp, Param::kCp, Param::kPp}));
  }
  const int dp = static_cast<int>(world / tcp);
  const int64_t stage = int64_t{s.tp} * s.cp * dp;  // ranks of one pipeline stage
  const int64_t etp_ep = int64_t{s.etp} * s.ep;
  if (stage % etp_ep != 0) {
    return absl::StrCat("ETP*EP = ", s.etp, "*", s.ep, " = ", etp_ep,
                        " does not divide TP*CP*DP = ", s.tp, "*", s.cp, "*", dp, " = ", stage,
                        ", the ranks of one pipeline stage that the expert grid folds as "
                        "ETP*EP*EDP",
                        hint({Param::kEp, Param::kEtp}));
  }
  if (req == nullptr) return "";

  const std::pair<const char*, int64_t> fields[] = {
      {"--num_attention_heads", req->num_attention_heads},
      {"--num_query_groups", req->num_query_groups},
      {"--num_experts", req->num_experts},
      {"--ffn_hidden_size", req->ffn_hidden_size},
      {"--global_batch_size", req->global_batch_size},
      {"--micro_batch_size", req->micro_batch_size},
  };
  for (const auto& [name, value] : fields) {
    if (value < 0)
      return absl::StrCat(name, "=", value, " must not be negative (0 skips its check)");
  }
  if (req->num_attention_heads > 0 && req->num_attention_heads % s.tp != 0) {
    return absl::StrCat(Flag(Param::kTp), "=", s.tp,
                        " does not divide --num_attention_heads=", req->num_attention_heads,
                        ": each TP rank holds whole heads", hint({Param::kTp}));
  }
  // Megatron-Core's attention splits the query groups over TP when there are
  // at least TP of them, and otherwise gives each group to TP/groups ranks
  // (the replicated-KV layout). Either way one count must divide the other.
  const int64_t groups = req->num_query_groups;
  if (groups > 0 && (groups >= s.tp ? groups % s.tp != 0 : s.tp % groups != 0)) {
    return absl::StrCat(
        Flag(Param::kTp), "=", s.tp, " and --num_query_groups=", groups,
        ": one must divide the other (TP ranks split the query groups evenly, or each group is "
        "replicated on TP/groups ranks when TP > groups)",
        hint({Param::kTp}));
  }
  if (req->num_experts > 0 && req->num_experts % s.ep != 0) {
    return absl::StrCat(Flag(Param::kEp), "=", s.ep,
                        " does not divide --num_experts=", req->num_experts,
                        ": each EP rank holds whole experts", hint({Param::kEp}));
  }
  if (req->ffn_hidden_size > 0 && req->ffn_hidden_size % s.tp != 0) {
    return absl::StrCat(
        Flag(Param::kTp), "=", s.tp, " does not divide --ffn_hidden_size=", req->ffn_hidden_size,
        ": dense MLPs split their hidden columns evenly over TP", hint({Param::kTp}));
  }
  if (req->ffn_hidden_size > 0 && req->ffn_hidden_size % s.etp != 0) {
    return absl::StrCat(
        Flag(Param::kEtp), "=", s.etp, " does not divide --ffn_hidden_size=", req->ffn_hidden_size,
        ": each expert splits its hidden columns evenly over ETP", hint({Param::kEtp}));
  }
  const int64_t global = req->global_batch_size, micro = req->micro_batch_size;
  if (global > 0 && micro > 0 && global % (micro * dp) != 0) {
    return absl::StrCat("--global_batch_size=", global,
                        " is not divisible by --micro_batch_size*DP = ", micro, "*", dp, " = ",
                        micro * dp,
                        ": every data-parallel rank runs the same whole number of "
                        "micro-batches per step",
                        suggest ? absl::StrCat("; ", BatchAlternatives(global, micro, dp)) : "");
  }
  return "";
}

std::string FormatGroup(const std::vector<int>& ranks) {
  // Runs of three or more consecutive ranks print as a range: TP groups
  // are contiguous and would otherwise dominate the table.
  std::vector<std::string> parts;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (j - i >= 2) {
      parts.push_back(absl::StrCat(ranks[i], "-", ranks[j]));
    } else {
      for (size_t k = i; k <= j; ++k) parts.push_back(absl::StrCat(ranks[k]));
    }
    i = j + 1;
  }
  return absl::StrCat("[", absl::StrJoin(parts, " "), "]");
}

}  // namespace

const char* GroupKindName(GroupKind kind) { return Info(kind).name; }

absl::StatusOr<RankGrid> RankGrid::Create(int world_size, const ParallelSizes& sizes,
                                          const GridRequirements* requirements) {
  const std::string violation = Violation(world_size, sizes, requirements, /*suggest=*/true);
  if (!violation.empty()) return absl::InvalidArgumentError(absl::StrCat("rank grid: ", violation));
  return RankGrid(world_size, sizes);
}

RankGrid::RankGrid(int world_size, const ParallelSizes& sizes)
    : world_size_(world_size), sizes_(sizes) {
  dp_ = world_size / (sizes.tp * sizes.cp * sizes.pp);
  edp_ = world_size / (sizes.etp * sizes.ep * sizes.pp);
  dense_axes_ = {sizes.tp, sizes.cp, dp_, sizes.pp};
  expert_axes_ = {sizes.etp, sizes.ep, edp_, sizes.pp};
}

const std::array<int, 4>& RankGrid::Axes(GroupKind kind) const {
  return Info(kind).expert ? expert_axes_ : dense_axes_;
}

void RankGrid::CheckRank(int rank) const {
  MOE_CHECK(rank >= 0 && rank < world_size_)
      << "RankGrid: rank " << rank << " is outside the world of " << world_size_ << " ranks";
}

RankCoords RankGrid::Coords(int rank) const {
  CheckRank(rank);
  const Axes4 d = Decompose(rank, dense_axes_);
  const Axes4 e = Decompose(rank, expert_axes_);
  return RankCoords{d[0], d[1], d[2], d[3], e[0], e[1], e[2]};
}

int RankGrid::GroupSize(GroupKind kind) const { return MaskedProduct(Axes(kind), Info(kind).mask); }

std::vector<int> RankGrid::Group(GroupKind kind, int rank) const {
  CheckRank(rank);
  const Axes4& axes = Axes(kind);
  return Members(Decompose(rank, axes), axes, Info(kind).mask);
}

std::vector<std::vector<int>> RankGrid::AllGroups(GroupKind kind) const {
  const Axes4& axes = Axes(kind);
  const unsigned mask = Info(kind).mask;
  std::vector<std::vector<int>> groups(NumGroups(kind));
  for (int color = 0; color < NumGroups(kind); ++color) {
    Axes4 coord{};
    SetFromMixedRadix(color, axes, ~mask & 0b1111u, &coord);
    groups[color] = Members(coord, axes, mask);
  }
  return groups;
}

SplitColor RankGrid::Color(GroupKind kind, int rank) const {
  CheckRank(rank);
  const Axes4& axes = Axes(kind);
  const unsigned mask = Info(kind).mask;
  const Axes4 coord = Decompose(rank, axes);
  return SplitColor{MixedRadix(coord, axes, ~mask & 0b1111u), MixedRadix(coord, axes, mask)};
}

std::string RankGrid::Describe() const {
  std::string out = absl::StrFormat(
      "rank grid: %d ranks, TP fastest-varying (Megatron-Core order tp-cp-ep-dp-pp)\n"
      "  dense layers:  TP %d x CP %d x DP %d x PP %d\n"
      "  expert layers: ETP %d x EP %d x EDP %d x PP %d\n",
      world_size_, sizes_.tp, sizes_.cp, dp_, sizes_.pp, sizes_.etp, sizes_.ep, edp_, sizes_.pp);
  std::vector<GroupKind> shown;
  for (GroupKind kind : kAllGroupKinds) {
    if (GroupSize(kind) > 1) shown.push_back(kind);
  }
  absl::StrAppend(&out, "  groups of one rank are not listed\n",
                  "rank   tp cp dp pp   etp ep edp   groups\n");
  for (int rank = 0; rank < world_size_; ++rank) {
    const RankCoords c = Coords(rank);
    absl::StrAppend(&out, absl::StrFormat("%4d  %3d %2d %2d %2d  %4d %2d %3d  ", rank, c.tp, c.cp,
                                          c.dp, c.pp, c.etp, c.ep, c.edp));
    std::vector<std::string> parts;
    for (GroupKind kind : shown) {
      parts.push_back(absl::StrCat(GroupKindName(kind), " ", FormatGroup(Group(kind, rank))));
    }
    absl::StrAppend(&out, parts.empty() ? "-" : absl::StrJoin(parts, "  "), "\n");
  }
  return out;
}

}  // namespace moe
