// moe-train as a user runs it: every bad flag is refused before anything is
// allocated, with one line on stderr naming the flag and a fix, and exit code
// 2; good flags (and the recipes) train and write the step log.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/json.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

class TrainFlagsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTestDir("train_flags_test"));
    // Byte-tokenizer-sized data: ids up to 256 (the end-of-document id).
    testing::WriteFakeDataset(*dir_ + "/train", 20, 100, 257, /*seed=*/1);
    testing::WriteFakeDataset(*dir_ + "/valid", 5, 100, 257, /*seed=*/2);
    testing::WriteFakeDataset(*dir_ + "/short", 1, 50, 257, /*seed=*/3);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // A valid tiny run; a test appends the flag it breaks (the last value wins).
  static std::string GoodFlags() {
    return absl::StrCat(
        "--num_layers=1 --hidden_size=32 --ffn_hidden_size=32 --num_attention_heads=4 "
        "--num_query_groups=2 --num_experts=4 --moe_router_topk=2 --moe_aux_loss_coeff=0.01 "
        "--vocab_size=257 --seq_length=16 --micro_batch_size=2 --global_batch_size=4 "
        "--train_iters=3 --lr=1e-3 --min_lr=1e-4 --lr_warmup_iters=1 --eval_interval=2 "
        "--eval_iters=2 --log_interval=1 --threads=2 --data_path=",
        *dir_, "/train --valid_data_path=", *dir_, "/valid");
  }

  // Runs moe-train from the source directory (where recipes name their paths).
  static RunResult Run(const std::string& flags) {
    const std::string out = *dir_ + "/stdout.txt";
    const std::string err = *dir_ + "/stderr.txt";
    const std::string command = absl::StrCat("cd ", MOE_SOURCE_DIR, " && ", MOE_TRAIN_BIN, " ",
                                             flags, " >", out, " 2>", err);
    const int status = std::system(command.c_str());
    RunResult result;
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.out = ReadAll(out);
    result.err = ReadAll(err);
    return result;
  }

  static std::string* dir_;
};

std::string* TrainFlagsTest::dir_ = nullptr;

struct BadFlag {
  std::string flags;     // appended to GoodFlags()
  std::string expected;  // in the error line
};

TEST_F(TrainFlagsTest, EveryBadFlagIsOneLineNamingItWithExitCode2) {
  const std::string data = *dir_;
  const std::vector<BadFlag> cases = {
      // Model shape: ModelConfig::Validate's rules, in flag names.
      {"--num_layers=0", "--num_layers must be positive, got 0; e.g. --num_layers=2"},
      {"--hidden_size=-8", "--hidden_size must be positive, got -8"},
      {"--hidden_size=30",
       "--hidden_size (30) must be divisible by --num_attention_heads (4) when --kv_channels "
       "is not set"},
      {"--num_query_groups=3",
       "--num_query_groups (3) must divide --num_attention_heads (4); choose a divisor"},
      {"--kv_channels=5", "--kv_channels must be even for rotary embeddings, got 5"},
      {"--moe_router_topk=5", "--moe_router_topk (5) cannot exceed --num_experts (4)"},
      {"--num_experts=0", "--num_experts must be positive, got 0"},
      {"--vocab_size=0", "--vocab_size must be positive, got 0; use the tokenizer's size"},
      {"--rotary_base=0", "--rotary_base must be > 0, got 0; Mixtral uses 1e6"},
      {"--norm_epsilon=-1", "--norm_epsilon must be > 0, got -1"},
      {"--init_method_std=0", "--init_method_std must be > 0, got 0"},
      {"--moe_aux_loss_coeff=-0.5", "--moe_aux_loss_coeff must be >= 0, got -0.5"},
      {"--moe_z_loss_coeff=-1", "--moe_z_loss_coeff must be >= 0, got -1"},
      {"--ffn_hidden_size=-1", "--ffn_hidden_size must be positive, got -1"},
      // Batches and steps.
      {"--seq_length=0", "--seq_length must be positive, got 0"},
      {"--seq_length=64 --max_position_embeddings=32",
       "--seq_length (64) exceeds --max_position_embeddings (32)"},
      {"--micro_batch_size=0", "--micro_batch_size must be positive, got 0"},
      {"--global_batch_size=5",
       "--global_batch_size (5) must be a multiple of --micro_batch_size (2); e.g. "
       "--global_batch_size=6"},
      {"--train_iters=0", "--train_iters must be positive, got 0"},
      // Optimizer and schedule: LrSchedule and AdamW's rules, in flag names.
      {"--lr=0", "--lr must be a positive number, got 0"},
      {"--min_lr=1", "--lr (0.001) must be >= --min_lr (1)"},
      {"--lr_warmup_iters=3", "--lr_warmup_iters (3) must be < --lr_decay_iters (3)"},
      {"--lr_decay_iters=-2", "--lr_decay_iters must be > 0, got -2"},
      {"--lr_decay_style=exponential", "--lr_decay_style must be constant, linear, cosine"},
      {"--adam_beta1=1", "--adam_beta1 must be in [0, 1), got 1"},
      {"--adam_beta2=-0.1", "--adam_beta2 must be in [0, 1), got -0.1"},
      {"--adam_eps=-1", "--adam_eps must be >= 0, got -1"},
      {"--weight_decay=-0.1", "--weight_decay must be >= 0, got -0.1"},
      {"--clip_grad=-1", "--clip_grad must be >= 0, got -1"},
      // Validation, logging, threads.
      {"--eval_interval=0", "--eval_interval must be positive, got 0"},
      {"--eval_iters=0", "--eval_iters must be positive, got 0"},
      {"--log_interval=-1", "--log_interval must be positive, got -1"},
      {"--threads=-1", "--threads must be >= 0, got -1"},
      // Parallel layout: what does not run yet is refused, nothing is ignored.
      // Tensor parallelism needs sequence parallelism (an MoE model), an even
      // split of the vocabulary and of the sequence.
      {"--tensor_model_parallel_size=2",
       "--tensor_model_parallel_size=2 needs --sequence_parallel"},
      {"--tensor_model_parallel_size=2 --sequence_parallel",
       "--vocab_size=257 is not divisible by --tensor_model_parallel_size=2"},
      {"--tensor_model_parallel_size=2 --sequence_parallel --vocab_size=258 --seq_length=15",
       "--seq_length=15 is not divisible by --tensor_model_parallel_size=2"},
      // Expert parallelism runs, but one rank cannot hold an EP group of 2.
      {"--expert_model_parallel_size=2", "ETP*EP = 1*2 = 2 does not divide TP*CP*DP = 1*1*1 = 1"},
      {"--expert_tensor_parallel_size=2", "ETP*EP = 2*1 = 2 does not divide TP*CP*DP = 1*1*1 = 1"},
      {"--moe_token_dispatcher_type=ring", "expected alltoall or allgather"},
      {"--moe_expert_capacity_factor=-1", "--moe_expert_capacity_factor must be > 0"},
      {"--moe_token_drop_policy=random", "--moe_token_drop_policy must be probs or position"},
      {"--moe_pad_expert_input_to_capacity",
       "--moe_pad_expert_input_to_capacity needs a capacity (--moe_expert_capacity_factor > 0)"},
      {"--moe_router_load_balancing_type=sinkhorn", "--moe_router_load_balancing_type must be"},
      {"--moe_router_score_function=relu",
       "--moe_router_score_function must be softmax or sigmoid, got \"relu\""},
      {"--moe_router_topp=1.5", "--moe_router_topp must be in (0, 1]"},
      {"--moe_router_enable_expert_bias",
       "--moe_router_enable_expert_bias needs --moe_router_score_function=sigmoid"},
      {"--moe_router_num_groups=3", "needs both --moe_router_num_groups and"},
      // Expert layouts (PR-MoE, --moe_layer_freq); the test model has 1 layer.
      {"--num_experts=4,x", "--num_experts=4,x: expected an integer or a comma-separated list"},
      {"--num_experts=4,8", "--num_experts has 2 entries for 1 layers"},
      {"--num_layers=2 --num_experts=4,8",
       "hf_aux_loss pools every layer's router statistics and needs the same number of experts"},
      {"--num_layers=2 --num_experts=1,8 --moe_router_load_balancing_type=aux_loss",
       "--num_experts entries must lie in [--moe_router_topk = 2, --num_experts = 8], got 1"},
      {"--moe_layer_freq=0", "--moe_layer_freq must be >= 1"},
      {"--moe_layer_freq=0", "or a 0/1 list, got 0"},
      {"--num_layers=2 --moe_layer_freq=0,0", "--moe_layer_freq has no MoE layer"},
      {"--num_layers=2 --moe_layer_freq=1,2", "--moe_layer_freq entries must be 0 or 1, got 2"},
      {"--moe_shared_expert_intermediate_size=-1",
       "--moe_shared_expert_intermediate_size must be >= 0"},
      {"--pipeline_model_parallel_size=0", "--pipeline_model_parallel_size must be positive"},
      {"--sequence_parallel", "--sequence_parallel needs --tensor_model_parallel_size > 1"},
      {"--ddp_bucket_size=-1", "--ddp_bucket_size must be >= 0, got -1"},
      {"--sim_latency_us=-5",
       "--sim_latency_us must be a finite number >= 0, got -5; e.g. --sim_latency_us=10"},
      {"--sim_bandwidth_gbps=-10",
       "--sim_bandwidth_gbps must be a finite number >= 0, got -10; e.g. "
       "--sim_bandwidth_gbps=10 (Gbit/s)"},
      {"--sim_latency_us=inf", "--sim_latency_us must be a finite number >= 0, got inf"},
      {"--log_jsonl=/proc/moe-train-test/log.jsonl",
       "--log_jsonl=/proc/moe-train-test/log.jsonl: cannot open for appending"},
      // Data.
      {"--data_path=", "--data_path is required"},
      {absl::StrCat("--data_path=", data, "/missing"),
       absl::StrCat("--data_path=", data, "/missing: ")},
      {absl::StrCat("--valid_data_path=", data, "/missing"),
       absl::StrCat("--valid_data_path=", data, "/missing: ")},
      {absl::StrCat("--data_path=", data, "/short --seq_length=64"),
       "holds 50 tokens, fewer than one sample of --seq_length + 1 = 65"},
      {"--vocab_size=200", "--vocab_size=200 does not cover token id"},
      {"--eval_iters=100", "--eval_iters=100 needs 400 validation samples"},
      {"extra_argument", "unexpected argument 'extra_argument'"},
  };
  for (const BadFlag& c : cases) {
    SCOPED_TRACE(c.flags);
    const RunResult r = Run(GoodFlags() + " " + c.flags);
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_TRUE(r.out.empty()) << "nothing may run before validation passes:\n" << r.out;
    const std::vector<std::string> lines = absl::StrSplit(r.err, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << r.err;
    EXPECT_EQ(lines[0].find("---"), std::string::npos) << "a flag spelled with extra dashes";
    EXPECT_EQ(lines[0].rfind("moe-train: error: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find(c.expected), std::string::npos) << lines[0];
  }
}

TEST_F(TrainFlagsTest, GoodFlagsTrainAndWriteTheStepLog) {
  const std::string log = *dir_ + "/logs/run.jsonl";  // the directory is created
  const RunResult r = Run(GoodFlags() + " --log_jsonl=" + log);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  for (const char* expected :
       {"moe-train: 2 threads", "params ", " active per token", "samples", "step 1/3 | loss ",
        "step 3/3 | loss ", "validation | step 2 | val loss", "validation | step 3 | val loss",
        "step log in "}) {
    EXPECT_NE(r.out.find(expected), std::string::npos) << expected << " in\n" << r.out;
  }
  const std::vector<std::string> lines = absl::StrSplit(ReadAll(log), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  for (const std::string& line : lines) {
    absl::StatusOr<Json> record = ParseJson(line, log);
    ASSERT_TRUE(record.ok()) << record.status();
    EXPECT_NE(record->Find("lm_loss"), nullptr);
  }
}

// Either sim flag turns the simulated network on; rank 0 says so with the
// model, the bandwidth in the flag's Gbit/s and the options' GB/s. On one
// rank there is no network, so the run is the plain one.
TEST_F(TrainFlagsTest, SimulatedNetworkIsAnnounced) {
  const RunResult on = Run(GoodFlags() + " --sim_latency_us=10 --sim_bandwidth_gbps=10");
  ASSERT_EQ(on.exit_code, 0) << on.err;
  EXPECT_NE(on.out.find("network   simulated on: alpha 10 us per operation + bytes / beta, beta "
                        "10 Gbit/s = 1.25 GB/s"),
            std::string::npos)
      << on.out;
  const RunResult latency_only = Run(GoodFlags() + " --sim_latency_us=3");
  ASSERT_EQ(latency_only.exit_code, 0) << latency_only.err;
  EXPECT_NE(latency_only.out.find("alpha 3 us per operation + bytes / beta, beta unlimited"),
            std::string::npos)
      << latency_only.out;
  const RunResult off = Run(GoodFlags());
  ASSERT_EQ(off.exit_code, 0) << off.err;
  EXPECT_EQ(off.out.find("network   simulated"), std::string::npos) << off.out;
}

TEST_F(TrainFlagsTest, PrintGridPrintsTheLayoutAndExits) {
  const RunResult r = Run(GoodFlags() + " --print_grid --log_jsonl=" + *dir_ + "/grid.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("TP 1 x CP 1 x DP 1 x PP 1"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("step "), std::string::npos) << "nothing trains:\n" << r.out;
}

// A recipe's flags all pass validation; command-line flags after the
// flagfile override it. mixtral-tiny runs one step on the fake data;
// mixtral-8x7b would not fit, so it is checked up to the data (a missing
// prefix fails after every flag has been accepted).
TEST_F(TrainFlagsTest, RecipesAreValid) {
  const RunResult tiny = Run(absl::StrCat(
      "--flagfile=examples/recipes/mixtral-tiny.flags --train_iters=1 --lr_warmup_iters=0 "
      "--log_jsonl= --data_path=",
      *dir_, "/train --valid_data_path="));
  EXPECT_EQ(tiny.exit_code, 0) << tiny.err;
  EXPECT_NE(tiny.out.find("step 1/1 | loss "), std::string::npos) << tiny.out;

  const RunResult big = Run(absl::StrCat("--flagfile=examples/recipes/mixtral-8x7b.flags ",
                                         "--log_jsonl= --data_path=", *dir_, "/missing"));
  EXPECT_EQ(big.exit_code, 2);
  EXPECT_NE(big.err.find(absl::StrCat("--data_path=", *dir_, "/missing: ")), std::string::npos)
      << big.err;
}

}  // namespace
}  // namespace moe
