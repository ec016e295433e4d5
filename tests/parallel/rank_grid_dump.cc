// Prints RankGrid's groups for rank_grid_reference.py, which compares them
// with Megatron-Core's RankGenerator. Reads one layout per line on stdin,
// "world tp cp pp ep etp", and answers one line per layout:
//   ok {"tp": [[0, 1], ...], "dp": ..., ...}   (every GroupKind)
//   invalid <message>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/rank_grid.h"

int main() {
  int world = 0;
  moe::ParallelSizes s;
  while (std::cin >> world >> s.tp >> s.cp >> s.pp >> s.ep >> s.etp) {
    const absl::StatusOr<moe::RankGrid> grid = moe::RankGrid::Create(world, s);
    if (!grid.ok()) {
      std::cout << "invalid " << grid.status().message() << "\n";
      continue;
    }
    std::vector<std::string> kinds;
    for (moe::GroupKind kind : moe::kAllGroupKinds) {
      std::vector<std::string> groups;
      for (const std::vector<int>& g : grid->AllGroups(kind)) {
        groups.push_back(absl::StrCat("[", absl::StrJoin(g, ", "), "]"));
      }
      kinds.push_back(
          absl::StrCat("\"", moe::GroupKindName(kind), "\": [", absl::StrJoin(groups, ", "), "]"));
    }
    std::cout << "ok {" << absl::StrJoin(kinds, ", ") << "}\n";
  }
  return 0;
}
