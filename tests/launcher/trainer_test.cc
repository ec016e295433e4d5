// The training loop through the Trainer class on a tiny fp32 model: gradient
// accumulation leaves the math unchanged, the first step reads the first
// global batch, the schedule, skipped non-finite steps, validation and the
// JSONL log.
#include "launcher/trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/json.h"
#include "launcher/train_flags.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

constexpr int64_t kVocab = 64;

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::MakeTestDir("trainer_test"));
    // 2000 training tokens = 124 samples of 16 + 1; 500 validation tokens = 31.
    testing::WriteFakeDataset(*dir_ + "/train", 40, 50, kVocab, /*seed=*/1);
    testing::WriteFakeDataset(*dir_ + "/valid", 10, 50, kVocab, /*seed=*/2);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // A 2-layer, 4-expert model small enough to step in milliseconds. The
  // router losses are off: they are taken per micro-batch (as in Megatron),
  // so only the language-model loss is invariant to the micro-batch size.
  static TrainerOptions TinyOptions(int64_t micro_batch_size) {
    TrainerOptions o;
    ModelConfig& c = o.model;
    c.vocab_size = kVocab;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.num_local_experts = 4;
    c.num_experts_per_tok = 2;
    c.max_position_embeddings = 16;
    c.rope_theta = 1e4;
    c.router_aux_loss_coef = 0;
    c.router_z_loss_coef = 0;
    o.seq_length = 16;
    o.micro_batch_size = micro_batch_size;
    o.global_batch_size = 4;
    o.train_iters = 3;
    o.lr.max_lr = 1e-3;
    o.lr.min_lr = 1e-4;
    o.lr.decay_iters = 3;
    o.adam.weight_decay = 0.1;
    o.clip_grad = 1.0;
    o.seed = 7;
    o.data_path = *dir_ + "/train";
    o.valid_data_path = *dir_ + "/valid";
    o.eval_interval = 2;
    o.eval_iters = 2;
    o.log_interval = 1;
    return o;
  }

  static std::unique_ptr<Trainer> MakeTrainer(const TrainerOptions& options) {
    EXPECT_TRUE(ValidateTrainerOptions(options).ok()) << ValidateTrainerOptions(options);
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
    EXPECT_TRUE(trainer.ok()) << trainer.status();
    return trainer.ok() ? std::move(*trainer) : nullptr;
  }

  static std::vector<Json> ReadJsonl(const std::string& path) {
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

  static std::string* dir_;
};

std::string* TrainerTest::dir_ = nullptr;

double Relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

// The same global batch split into 1, 2 or 4 micro-batches gives the same
// losses and gradient norms at every step (fp32: relative 1e-5), and the same
// weights after three updates (same validation loss).
TEST_F(TrainerTest, GradientAccumulationDoesNotChangeTheMath) {
  std::vector<std::vector<StepStats>> runs;
  std::vector<double> val_losses;
  for (int64_t micro : {1, 2, 4}) {
    std::unique_ptr<Trainer> trainer = MakeTrainer(TinyOptions(micro));
    ASSERT_NE(trainer, nullptr);
    std::vector<StepStats> steps;
    for (int s = 0; s < 3; ++s) {
      absl::StatusOr<StepStats> stats = trainer->Step();
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_FALSE(stats->skipped);
      steps.push_back(*stats);
    }
    absl::StatusOr<double> val = trainer->Evaluate();
    ASSERT_TRUE(val.ok()) << val.status();
    val_losses.push_back(*val);
    runs.push_back(steps);
  }
  for (size_t r = 1; r < runs.size(); ++r) {
    for (int s = 0; s < 3; ++s) {
      SCOPED_TRACE(::testing::Message()
                   << "micro-batches of " << (r == 1 ? 2 : 4) << ", step " << s + 1);
      EXPECT_LT(Relative(runs[r][s].lm_loss, runs[0][s].lm_loss), 1e-5);
      EXPECT_LT(Relative(runs[r][s].loss, runs[0][s].loss), 1e-5);
      EXPECT_LT(Relative(runs[r][s].grad_norm, runs[0][s].grad_norm), 1e-5);
      EXPECT_EQ(runs[r][s].tokens, runs[0][s].tokens);
      EXPECT_EQ(runs[r][s].lr, runs[0][s].lr);
    }
    EXPECT_LT(Relative(val_losses[r], val_losses[0]), 1e-5);
  }
  // The steps did train: different batches, moving weights.
  EXPECT_NE(runs[0][0].lm_loss, runs[0][1].lm_loss);
}

// Step 1 trains on global samples [0, G) of the shuffled training set, and
// its lm_loss is their mean token cross-entropy before the update: about
// ln(vocab) for a freshly initialised model.
TEST_F(TrainerTest, FirstStepReadsTheFirstGlobalBatch) {
  const TrainerOptions options = TinyOptions(2);
  std::unique_ptr<Trainer> trainer = MakeTrainer(options);
  ASSERT_NE(trainer, nullptr);

  absl::StatusOr<IndexedDataset> indexed = IndexedDataset::Open(options.data_path);
  ASSERT_TRUE(indexed.ok()) << indexed.status();
  absl::StatusOr<GptDataset> dataset =
      GptDataset::Create(std::make_shared<const IndexedDataset>(std::move(*indexed)),
                         options.seq_length, options.seed);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  const int64_t gbs = options.global_batch_size;
  const int64_t seq = options.seq_length;
  Tensor ids = Tensor::Empty({gbs, seq}, DType::kI32);
  Tensor labels = Tensor::Empty({gbs, seq}, DType::kI32);
  std::vector<int32_t> sample(static_cast<size_t>(seq + 1));
  for (int64_t b = 0; b < gbs; ++b) {
    ASSERT_TRUE(dataset->GetSample(b, sample.data()).ok());
    for (int64_t t = 0; t < seq; ++t) {
      ids.data<int32_t>()[b * seq + t] = sample[t];
      labels.data<int32_t>()[b * seq + t] = sample[t + 1];
    }
  }
  const Losses expected = trainer->model().Evaluate(ids, labels);
  ASSERT_EQ(expected.tokens, gbs * seq);

  absl::StatusOr<StepStats> stats = trainer->Step();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->step, 1);
  EXPECT_EQ(stats->tokens, gbs * seq);
  EXPECT_LT(Relative(stats->lm_loss, expected.lm_loss_sum / expected.tokens), 1e-6);
  EXPECT_NEAR(stats->lm_loss, std::log(static_cast<double>(kVocab)), 0.05);
  EXPECT_GT(stats->grad_norm, 0);
  EXPECT_GT(stats->tokens_per_s, 0);
  EXPECT_GT(stats->step_s, 0);
}

// The k-th update runs at Megatron's At(k - 1): with 2 warmup steps the first
// update runs at 0, the second at half the peak, the third at the peak.
TEST_F(TrainerTest, LearningRateFollowsTheSchedule) {
  TrainerOptions options = TinyOptions(4);
  options.train_iters = 5;
  options.lr.warmup_iters = 2;
  options.lr.decay_iters = 5;
  std::unique_ptr<Trainer> trainer = MakeTrainer(options);
  ASSERT_NE(trainer, nullptr);
  const LrSchedule schedule(options.lr);
  for (int64_t k = 1; k <= 5; ++k) {
    absl::StatusOr<StepStats> stats = trainer->Step();
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_DOUBLE_EQ(stats->lr, schedule.At(k - 1)) << "step " << k;
  }
  EXPECT_EQ(schedule.At(0), 0.0);
  EXPECT_DOUBLE_EQ(schedule.At(1), 0.5e-3);
  EXPECT_DOUBLE_EQ(schedule.At(2), 1e-3);
}

// A NaN weight makes every gradient norm NaN: each step is skipped (weights
// untouched, grads zeroed, logged with "skipped"), and Train stops with an
// error after three in a row.
TEST_F(TrainerTest, NonFiniteGradientsSkipTheStepAndStopAfterThree) {
  TrainerOptions options = TinyOptions(2);
  options.train_iters = 10;
  options.valid_data_path.clear();
  std::unique_ptr<Trainer> trainer = MakeTrainer(options);
  ASSERT_NE(trainer, nullptr);
  Parameter* head = trainer->model().FindParameter("lm_head.weight");
  ASSERT_NE(head, nullptr);
  head->value.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  Parameter* embed = trainer->model().FindParameter("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  const std::vector<float> embed_before = embed->value.ToFloatVector();

  const std::string log_path = testing::MakeTestDir("trainer_nan") + "/log.jsonl";
  absl::StatusOr<StepLog> log = StepLog::Open(log_path);
  ASSERT_TRUE(log.ok()) << log.status();
  std::ostringstream out;
  const absl::Status status = trainer->Train(&*log, &out);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("not finite for 3 steps in a row"), std::string::npos) << status;
  EXPECT_EQ(trainer->step(), 3);
  EXPECT_EQ(embed->value.ToFloatVector(), embed_before);
  for (const Parameter* p : trainer->model().Parameters()) {
    for (float g : p->grad.ToFloatVector()) ASSERT_EQ(g, 0.0f) << p->name;
  }
  const std::vector<Json> records = ReadJsonl(log_path);
  ASSERT_EQ(records.size(), 3u);
  for (const Json& record : records) {
    ASSERT_NE(record.Find("skipped"), nullptr);
    EXPECT_TRUE(record.Find("skipped")->as_bool());
    EXPECT_TRUE(record.Find("grad_norm")->is_null());
  }
  EXPECT_NE(out.str().find("skipped"), std::string::npos);
}

// Train() logs every step to the JSONL file (appending across runs), prints
// the step lines and validates every eval_interval steps and at the end.
TEST_F(TrainerTest, TrainLogsEveryStepAndValidates) {
  const TrainerOptions options = TinyOptions(2);  // 3 steps, validation at 2 and 3
  const std::string log_path = testing::MakeTestDir("trainer_log") + "/log.jsonl";
  for (int run = 1; run <= 2; ++run) {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options);
    ASSERT_NE(trainer, nullptr);
    absl::StatusOr<StepLog> log = StepLog::Open(log_path);
    ASSERT_TRUE(log.ok()) << log.status();
    std::ostringstream out;
    ASSERT_TRUE(trainer->Train(&*log, &out).ok());
    EXPECT_NE(out.str().find("step 1/3 | loss "), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("step 3/3 | loss "), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("validation | step 2 | val loss "), std::string::npos) << out.str();
    EXPECT_NE(out.str().find("validation | step 3 | val loss "), std::string::npos) << out.str();
    EXPECT_EQ(ReadJsonl(log_path).size(), static_cast<size_t>(3 * run));
  }
  const std::vector<Json> records = ReadJsonl(log_path);
  for (size_t i = 0; i < records.size(); ++i) {
    const Json& r = records[i];
    EXPECT_EQ(r.Find("step")->as_int(), static_cast<int64_t>(i % 3 + 1));
    for (const char* key :
         {"loss", "lm_loss", "aux_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "step_s"}) {
      ASSERT_NE(r.Find(key), nullptr) << key;
      EXPECT_TRUE(r.Find(key)->is_number()) << key;
    }
    EXPECT_EQ(r.Find("val_loss") != nullptr, i % 3 != 0) << "record " << i;
    EXPECT_EQ(r.Find("skipped"), nullptr);
  }
  // Both runs are the same computation.
  EXPECT_EQ(records[2].Find("lm_loss")->as_double(), records[5].Find("lm_loss")->as_double());
}

// Validation reads fixed windows: repeatable, and independent of the
// micro-batch size it runs with.
TEST_F(TrainerTest, ValidationIsRepeatableAndBatchIndependent) {
  std::unique_ptr<Trainer> a = MakeTrainer(TinyOptions(1));
  std::unique_ptr<Trainer> b = MakeTrainer(TinyOptions(4));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const absl::StatusOr<double> a1 = a->Evaluate();
  const absl::StatusOr<double> a2 = a->Evaluate();
  const absl::StatusOr<double> b1 = b->Evaluate();
  ASSERT_TRUE(a1.ok() && a2.ok() && b1.ok());
  EXPECT_EQ(*a1, *a2);
  EXPECT_LT(Relative(*b1, *a1), 1e-6);
  EXPECT_NEAR(*a1, std::log(static_cast<double>(kVocab)), 0.05);
}

// Ids outside --vocab_size are refused before the model is built.
TEST_F(TrainerTest, DataBeyondTheVocabularyIsRefused) {
  TrainerOptions options = TinyOptions(2);
  options.model.vocab_size = 32;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  ASSERT_FALSE(trainer.ok());
  EXPECT_NE(trainer.status().message().find("--vocab_size=32 does not cover token id"),
            std::string::npos)
      << trainer.status();
}

}  // namespace
}  // namespace moe
