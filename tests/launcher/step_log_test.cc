// The step log's two faces: the JSONL record and the human line.
#include "launcher/step_log.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <string>

#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

StepStats Example() {
  StepStats s;
  s.step = 10;
  s.loss = 4.12346;
  s.lm_loss = 4.1;
  s.aux_loss = 2.00126;
  s.z_loss = 0.5;
  s.lr = 3e-4;
  s.grad_norm = 1.2344;
  s.tokens = 2048;
  s.step_s = 0.21;
  s.tokens_per_s = 12345;
  return s;
}

TEST(StepLogTest, HumanLine) {
  EXPECT_EQ(FormatStepLine(Example(), 300, /*show_z=*/false),
            "step 10/300 | loss 4.1235 | lm 4.1000 | aux 2.0013 | lr 3.0e-04 | grad 1.234 | "
            "12.3k tok/s | 0.210 s");
  EXPECT_NE(FormatStepLine(Example(), 300, /*show_z=*/true).find("| z 0.5000 |"),
            std::string::npos);
  EXPECT_EQ(FormatValidationLine(50, std::log(24.0)),
            "validation | step 50 | val loss 3.1781 | val ppl 24.00");
}

TEST(StepLogTest, RecordHasEveryFieldAndWritesNonFiniteAsNull) {
  StepStats s = Example();
  EXPECT_EQ(StepRecord(s).Dump(),
            "{\"step\":10,\"loss\":4.12346,\"lm_loss\":4.1,\"aux_loss\":2.00126,\"z_loss\":0.5,"
            "\"lr\":3e-04,\"grad_norm\":1.2344,\"tokens_per_s\":12345,\"step_s\":0.21}");
  s.val_loss = 3.5;
  s.skipped = true;
  s.grad_norm = std::numeric_limits<double>::infinity();
  s.loss = std::numeric_limits<double>::quiet_NaN();
  const Json record = StepRecord(s);
  EXPECT_TRUE(record.Find("grad_norm")->is_null());
  EXPECT_TRUE(record.Find("loss")->is_null());
  EXPECT_EQ(record.Find("val_loss")->as_double(), 3.5);
  EXPECT_TRUE(record.Find("skipped")->as_bool());
}

// Each Write is on disk at once (another reader sees it before the log is
// closed), and reopening appends.
TEST(StepLogTest, WritesAreFlushedAndAppended) {
  const std::string path = testing::MakeTestDir("step_log") + "/sub/dir/log.jsonl";
  {
    absl::StatusOr<StepLog> log = StepLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE(log->Write(Example()).ok());
    std::ifstream in(path);
    std::string line;
    ASSERT_TRUE(std::getline(in, line));
    EXPECT_EQ(line, StepRecord(Example()).Dump());
  }
  {
    absl::StatusOr<StepLog> log = StepLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE(log->Write(Example()).ok());
  }
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_EQ(lines, 2);
}

}  // namespace
}  // namespace moe
