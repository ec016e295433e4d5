// Layout invariance (DESIGN.md property 1) through the real moe-train binary:
// a Mixtral-tiny-shaped model (fp32, 2 layers, hidden 32, 4 experts top-2,
// aux and z losses on, seq 16, global batch 8 in micro-batches of 1), fixed
// seed and data, 5 steps, trained on every layout of kLayouts under mpirun;
// each step's loss, LM loss, aux loss and gradient norm, read from the
// --log_jsonl file, must equal the plain 1-rank run's within 1e-5 relative.
//
// The harness is one table: each issue adds its layouts (TP, SP, EP, PP, CP
// sizes) as rows with the flags that select them. Rows whose `math` flags
// change the model (expert capacity) compare against the 1-rank run with the
// same math flags: the first row of the table with ranks = 0 and those
// flags. Capacity drops on each rank's local tokens of one micro-batch, and
// every layout runs the same micro-batches as one rank (launcher/trainer.h),
// so that 1-rank run is exactly "the same local batches on one rank".
//
// Tensor parallelism (with sequence parallelism, which MoE models need) is
// the exception: each TP rank's MoE layer sees only its slice of the
// sequence, so capacity drops within half a sequence under TP 2, and no
// 1-rank run has those local batches (it would take an MoE layer that drops
// per half sequence while attention sees the whole). So capacity under TP
// compares against the plain TP 2 run with the same capacity (a row marked
// `reference`): every TP 2 layout (x DP, x EP) gives each rank the same
// local tokens, and the TP 2 run itself is checked against one rank by the
// dropless rows.
//
// Small gradient buckets (--ddp_bucket_size=1000) make many buckets whose
// chunks cut through parameters. --adam_eps=1e-6 (Megatron's default is
// 1e-8): a few gradient elements are sums that nearly cancel, of the size
// of eps, and with eps = 1e-8 AdamW turns their rounding noise (which the
// summation order of each layout sets) into updates of full size; five
// steps later that noise reaches 1e-5 in the z-loss and grad norm of some
// layouts (EP 2 under TP 2: 3e-5, EP 2 alone 1e-5), while with eps = 1e-6
// every layout stays near 1e-7, so the tolerance measures the layout, not
// the rounding. Runs with 8 ranks oversubscribe the machine (OMP_NUM_THREADS=1
// and --threads=1 keep it to one thread per rank).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
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
  const char* math = "";  // flags that change the model; rows compare within equal `math`
  // The first row of its `math` group and not a 1-rank run: see the header
  // comment (capacity under TP).
  bool reference = false;
};

constexpr const char* kCapacity = "--moe_expert_capacity_factor=1.0";
constexpr const char* kCapacityPosition =
    "--moe_expert_capacity_factor=0.75 --moe_token_drop_policy=position";
constexpr const char* kCapacityPad =
    "--moe_expert_capacity_factor=1.0 --moe_pad_expert_input_to_capacity";
// The router family: top-p with its entropy loss; sigmoid scores with
// group-limited routing, Megatron's per-layer aux loss and the expert bias
// (updated every step from all ranks' counts); the sequence-level aux loss.
constexpr const char* kTopP = "--moe_router_topp=0.6 --moe_router_topp_entropy_coeff=1e-2";
constexpr const char* kSigmoid =
    "--moe_router_score_function=sigmoid --moe_router_num_groups=2 --moe_router_group_topk=1 "
    "--moe_router_load_balancing_type=aux_loss --moe_router_enable_expert_bias "
    "--moe_router_bias_update_rate=1e-2";
constexpr const char* kSeqAux = "--moe_router_load_balancing_type=seq_aux_loss";
constexpr const char* kVariants = "--moe_shared_expert_intermediate_size=24 --moe_use_residual";
constexpr const char* kPyramid = "--num_experts=4,8 --moe_router_load_balancing_type=aux_loss";
constexpr const char* kLayerFreq = "--moe_layer_freq=0,1";
constexpr const char* kTp2 = "--tensor_model_parallel_size=2 --sequence_parallel";
constexpr const char* kTp4 = "--tensor_model_parallel_size=4 --sequence_parallel";
constexpr const char* kTp2Ep2 =
    "--tensor_model_parallel_size=2 --sequence_parallel --expert_model_parallel_size=2";
// Capacity under TP 2 (see the header comment): TP is part of the math here.
constexpr const char* kCapacityTp2 =
    "--moe_expert_capacity_factor=1.0 --tensor_model_parallel_size=2 --sequence_parallel";

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
    // Expert parallelism folded over the data-parallel ranks (issue 6):
    // EP x EDP = DP, both dispatchers.
    {"ep2", 2, "--expert_model_parallel_size=2"},
    {"ep2_allgather", 2, "--expert_model_parallel_size=2 --moe_token_dispatcher_type=allgather"},
    {"ep2_edp2", 4, "--expert_model_parallel_size=2"},
    {"ep2_edp2_distopt", 4, "--expert_model_parallel_size=2 --use_distributed_optimizer"},
    {"ep4", 4, "--expert_model_parallel_size=4"},
    {"ep4_allgather", 4, "--expert_model_parallel_size=4 --moe_token_dispatcher_type=allgather"},
    {"ep4_distopt", 4, "--expert_model_parallel_size=4 --use_distributed_optimizer"},
    {"ep2_simnet", 2, "--expert_model_parallel_size=2 --sim_latency_us=10 --sim_bandwidth_gbps=10"},
    // Capacity (drop and pad), each against its own 1-rank run.
    {"cap_dp1", 0, "", kCapacity},
    {"cap_dp2", 2, "", kCapacity},
    {"cap_ep2", 2, "--expert_model_parallel_size=2", kCapacity},
    {"cap_ep4_allgather", 4, "--expert_model_parallel_size=4 --moe_token_dispatcher_type=allgather",
     kCapacity},
    {"pos_dp1", 0, "", kCapacityPosition},
    {"pos_ep2_edp2", 4, "--expert_model_parallel_size=2", kCapacityPosition},
    {"pad_dp1", 0, "", kCapacityPad},
    {"pad_ep2", 2, "--expert_model_parallel_size=2", kCapacityPad},
    {"pad_ep4_distopt", 4, "--expert_model_parallel_size=4 --use_distributed_optimizer",
     kCapacityPad},
    {"topp_dp1", 0, "", kTopP},
    {"topp_ep2", 2, "--expert_model_parallel_size=2", kTopP},
    {"topp_ep4_allgather", 4,
     "--expert_model_parallel_size=4 --moe_token_dispatcher_type=allgather", kTopP},
    {"sigmoid_dp1", 0, "", kSigmoid},
    {"sigmoid_dp4_distopt", 4, "--use_distributed_optimizer", kSigmoid},
    {"sigmoid_ep2_edp2", 4, "--expert_model_parallel_size=2", kSigmoid},
    {"seqaux_dp1", 0, "", kSeqAux},
    {"seqaux_ep2", 2, "--expert_model_parallel_size=2", kSeqAux},
    // Tensor + sequence parallelism (issue 5), alone and with DP, the
    // distributed optimizer and EP folded over TP x DP (EDP = TP DP / EP).
    // TP 4 replicates each of the 2 query groups on 2 ranks.
    {"tp2", 2, kTp2},
    {"tp2_dp2", 4, kTp2},
    {"tp2_dp2_distopt", 4,
     "--tensor_model_parallel_size=2 --sequence_parallel --use_distributed_optimizer"},
    {"tp4", 4, kTp4},
    {"tp2_ep2", 2, kTp2Ep2},
    {"tp2_ep2_allgather", 2,
     "--tensor_model_parallel_size=2 --sequence_parallel "
     "--expert_model_parallel_size=2 --moe_token_dispatcher_type=allgather"},
    {"tp2_ep4", 4,
     "--tensor_model_parallel_size=2 --sequence_parallel --expert_model_parallel_size=4"},
    // The router statistics summed over TP: per-sequence, top-p entropy,
    // per-layer aux and the expert bias from routed counts.
    {"seqaux_tp2", 2, kTp2, kSeqAux},
    {"topp_tp2_ep2", 2, kTp2Ep2, kTopP},
    {"sigmoid_tp2_dp2", 4, kTp2, kSigmoid},
    {"cap_tp2", 2, "", kCapacityTp2, /*reference=*/true},
    {"cap_tp2_dp2", 4, "", kCapacityTp2},
    {"cap_tp2_ep2", 2, "--expert_model_parallel_size=2", kCapacityTp2},
    // Expert tensor parallelism: each expert's width split over ETP ranks,
    // alone, folded with EP, under TP, with both dispatchers.
    {"etp2", 2, "--expert_tensor_parallel_size=2"},
    {"etp2_ep2", 4, "--expert_tensor_parallel_size=2 --expert_model_parallel_size=2"},
    {"etp2_allgather_distopt", 4,
     "--expert_tensor_parallel_size=2 --moe_token_dispatcher_type=allgather "
     "--use_distributed_optimizer"},
    {"tp2_etp2", 2,
     "--tensor_model_parallel_size=2 --sequence_parallel "
     "--expert_tensor_parallel_size=2"},
    // Expert variants: a shared expert with Residual-MoE; PR-MoE (4 then 8
    // experts); a dense layer between MoE layers (--moe_layer_freq).
    {"variants_dp1", 0, "", kVariants},
    {"variants_ep2_etp2", 4, "--expert_model_parallel_size=2 --expert_tensor_parallel_size=2",
     kVariants},
    {"variants_tp2", 2, kTp2, kVariants},
    {"pyramid_dp1", 0, "", kPyramid},
    {"pyramid_ep4", 4, "--expert_model_parallel_size=4", kPyramid},
    {"pyramid_tp2_ep2", 2, kTp2Ep2, kPyramid},
    {"freq_dp1", 0, "", kLayerFreq},
    {"freq_ep2", 2, "--expert_model_parallel_size=2", kLayerFreq},
    {"freq_tp2_dp2_distopt", 4,
     "--tensor_model_parallel_size=2 --sequence_parallel "
     "--use_distributed_optimizer",
     kLayerFreq},
};

constexpr double kTolerance = 1e-5;
const char* const kCompared[] = {"loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"};

std::string ModelFlags(const std::string& data) {
  return "--num_layers=2 --hidden_size=32 --ffn_hidden_size=48 --num_attention_heads=4 "
         "--num_query_groups=2 --num_experts=4 --moe_router_topk=2 --moe_aux_loss_coeff=1e-2 "
         "--moe_z_loss_coeff=1e-3 --vocab_size=64 --seq_length=16 --rotary_base=10000 "
         "--micro_batch_size=1 --global_batch_size=8 --train_iters=5 --lr=1e-2 "
         "--lr_decay_style=constant --weight_decay=0.1 --adam_eps=1e-6 --clip_grad=0.5 --seed=7 "
         "--threads=1 --log_interval=1 --ddp_bucket_size=1000 --data_path=" +
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
  std::map<std::string, std::vector<Json>> references;  // by `math`
  for (const Layout& layout : kLayouts) {
    const std::string log = dir + "/" + layout.name + ".jsonl";
    const std::string out = dir + "/" + layout.name + ".out";
    std::string command;
    if (layout.ranks > 0)
      command = std::string(MOE_MPIEXEC) + " -n " + std::to_string(layout.ranks) + " ";
    command += std::string(MOE_TRAIN_BIN) + " " + ModelFlags(data) + " " + layout.flags + " " +
               layout.math + " --log_jsonl=" + log + " > " + out + " 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << command << "\n" << ReadFile(out);
    const std::vector<Json> records = ReadLog(log);
    ASSERT_EQ(records.size(), 5u) << layout.name << ": " << ReadFile(out);
    ASSERT_FALSE(layout.reference && references.contains(layout.math))
        << layout.name << ": a reference row must come first in its math group";
    std::vector<Json>& reference = references[layout.math];
    if (reference.empty()) {
      ASSERT_TRUE(layout.ranks == 0 || layout.reference)
          << layout.name << ": the first row of its math flags must be the 1-rank reference";
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
