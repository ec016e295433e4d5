// End to end: moe-train learns the shipped byte-level corpus
// (examples/data/make_dataset.sh, built by the CTest fixture
// launcher_corpus). 300 steps of a small Mixtral-shaped model take about 6 s
// on 2 idle cores (well under 3 minutes on a busy machine) and bring the
// validation loss from ln(257) = 5.55 to about 2.3 nats per byte (measured:
// 2.70, 2.41, 2.30 at steps 100, 200, 300); the bounds below leave a wide
// margin. Labelled "slow": select with ctest -L slow, skip with -LE slow.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/json.h"

namespace moe {
namespace {

TEST(TrainConvergenceTest, ValidationLossFallsWellBelowUniform) {
  const std::string corpus = MOE_CORPUS_DIR;
  const std::string log =
      absl::StrCat(::testing::TempDir(), "/train_convergence.", getpid(), ".jsonl");
  std::remove(log.c_str());
  // The recipe's shape, shrunk (hidden 64, 4 experts, 64-byte samples) so the
  // test stays fast; the recipe itself trains the larger model.
  const std::string command = absl::StrCat(
      MOE_TRAIN_BIN,
      " --num_layers=2 --hidden_size=64 --ffn_hidden_size=128 --num_attention_heads=4"
      " --num_query_groups=2 --num_experts=4 --moe_router_topk=2 --moe_aux_loss_coeff=1e-2"
      " --vocab_size=257 --seq_length=64 --rotary_base=10000 --micro_batch_size=8"
      " --global_batch_size=16 --train_iters=300 --lr=2e-3 --min_lr=2e-4 --lr_warmup_iters=20"
      " --weight_decay=0.1 --adam_beta2=0.95 --clip_grad=1.0 --seed=1234 --threads=2"
      " --eval_interval=100 --eval_iters=8 --log_interval=50",
      " --data_path=", corpus, "/corpus_train_text_document", " --valid_data_path=", corpus,
      "/corpus_valid_text_document", " --log_jsonl=", log);
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << command;

  std::ifstream in(log);
  std::vector<Json> records;
  for (std::string line; std::getline(in, line);) {
    absl::StatusOr<Json> record = ParseJson(line, log);
    ASSERT_TRUE(record.ok()) << record.status();
    records.push_back(*record);
  }
  ASSERT_EQ(records.size(), 300u);

  // Step 1 is measured before any update: a fresh model is near uniform.
  const double uniform = std::log(257.0);
  EXPECT_NEAR(records[0].Find("lm_loss")->as_double(), uniform, 0.1);

  std::vector<double> val_losses;
  for (const Json& r : records) {
    ASSERT_FALSE(r.Find("skipped") != nullptr) << r.Dump();
    if (const Json* val = r.Find("val_loss"); val != nullptr)
      val_losses.push_back(val->as_double());
  }
  ASSERT_EQ(val_losses.size(), 3u);  // steps 100, 200, 300
  for (size_t i = 0; i < val_losses.size(); ++i) {
    std::printf("validation loss %zu: %.4f\n", (i + 1) * 100, val_losses[i]);
    if (i > 0) {
      EXPECT_LT(val_losses[i], val_losses[i - 1]) << "validation " << i;
    }
  }
  EXPECT_LT(val_losses.back(), 3.0) << "uniform is " << uniform;

  double last_lm = 0;
  for (size_t i = records.size() - 20; i < records.size(); ++i) {
    last_lm += records[i].Find("lm_loss")->as_double() / 20;
  }
  std::printf("training lm loss, mean of the last 20 steps: %.4f\n", last_lm);
  EXPECT_LT(last_lm, 2.8);
}

}  // namespace
}  // namespace moe
