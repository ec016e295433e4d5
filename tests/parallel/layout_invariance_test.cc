// Layout invariance (DESIGN.md property 1) through the real moe-train binary:
// a Mixtral-tiny-shaped model (fp32, 2 layers, hidden 32, 4 experts top-2,
// aux and z losses on, seq 16, global batch 8 in micro-batches of 1), fixed
// seed and data, 5 steps, trained on every layout of kLayouts under mpirun;
// each step's loss, LM loss, aux loss and gradient norm, read from the
// --log_jsonl file, must equal the plain 1-rank run's within 1e-5 relative.
//
// The harness is one table: a later issue adds its layouts (TP, SP, EP, PP,
// CP sizes) as rows with the flags that select them. Small gradient buckets
// (--ddp_bucket_size=1000) make many buckets whose chunks cut through
// parameters. Runs with 8 ranks oversubscribe the machine (OMP_NUM_THREADS=1
// and --threads=1 keep it to one thread per rank).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/json.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

struct Layout {
  const char* name;
  int ranks;  // 0: no mpirun at all (the reference)
  const char* flags;
};

const Layout kLayouts[] = {
    {"dp1_plain", 0, ""},
    {"dp1", 1, ""},
    {"dp1_distopt", 1, "--use_distributed_optimizer"},
    {"dp2", 2, ""},
    {"dp2_distopt", 2, "--use_distributed_optimizer"},
    // A simulated 10 us / 10 Gbit/s network delays completion, never changes a value.
    {"dp2_simnet", 2, "--sim_latency_us=10 --sim_bandwidth_gbps=10"},
    {"dp4", 4, ""},
    {"dp4_distopt", 4, "--use_distributed_optimizer"},
    {"dp8", 8, ""},
    {"dp8_distopt", 8, "--use_distributed_optimizer"},
};

constexpr double kTolerance = 1e-5;
const char* const kCompared[] = {"loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"};

std::string ModelFlags(const std::string& data) {
  return "--num_layers=2 --hidden_size=32 --ffn_hidden_size=48 --num_attention_heads=4 "
         "--num_query_groups=2 --num_experts=4 --moe_router_topk=2 --moe_aux_loss_coeff=1e-2 "
         "--moe_z_loss_coeff=1e-3 --vocab_size=64 --seq_length=16 --rotary_base=10000 "
         "--micro_batch_size=1 --global_batch_size=8 --train_iters=5 --lr=1e-2 "
         "--lr_decay_style=constant --weight_decay=0.1 --clip_grad=0.5 --seed=7 --threads=1 "
         "--log_interval=1 --ddp_bucket_size=1000 --data_path=" +
         data;
}

std::vector<Json> ReadLog(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> records;
  std::string line;
  while (std::getline(in, line)) {
    absl::StatusOr<Json> record = ParseJson(line, path);
    EXPECT_TRUE(record.ok()) << record.status();
    if (record.ok()) records.push_back(*record);
  }
  return records;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(LayoutInvarianceTest, EveryLayoutGivesTheOneRankLossAndGradNorm) {
  const std::string dir = testing::MakeTestDir("layout_invariance");
  const std::string data = dir + "/data";
  testing::WriteFakeDataset(data, 40, 100, 64, 11);
  std::vector<Json> reference;
  for (const Layout& layout : kLayouts) {
    const std::string log = dir + "/" + layout.name + ".jsonl";
    const std::string out = dir + "/" + layout.name + ".out";
    std::string command;
    if (layout.ranks > 0)
      command = std::string(MOE_MPIEXEC) + " -n " + std::to_string(layout.ranks) + " ";
    command += std::string(MOE_TRAIN_BIN) + " " + ModelFlags(data) + " " + layout.flags +
               " --log_jsonl=" + log + " > " + out + " 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << command << "\n" << ReadFile(out);
    const std::vector<Json> records = ReadLog(log);
    ASSERT_EQ(records.size(), 5u) << layout.name << ": " << ReadFile(out);
    if (reference.empty()) {
      reference = records;
      continue;
    }
    for (const char* key : kCompared) {
      double worst = 0;
      for (size_t s = 0; s < records.size(); ++s) {
        const double want = reference[s].Find(key)->as_double();
        const double got = records[s].Find(key)->as_double();
        const double error = std::abs(got - want) / std::max(std::abs(want), 1e-30);
        worst = std::max(worst, error);
        EXPECT_LE(error, kTolerance) << layout.name << " step " << s + 1 << " " << key << ": "
                                     << got << " vs 1 rank " << want;
      }
      std::printf("%-12s %-9s max relative error %.2e\n", layout.name, key, worst);
    }
  }
}

}  // namespace
}  // namespace moe
