#include "core/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include <gtest/gtest.h>

namespace moe {
namespace {

constexpr double kPi = std::numbers::pi;

LrSchedule::Options Base(LrDecayStyle style) {
  LrSchedule::Options o;
  o.max_lr = 3e-4;
  o.min_lr = 3e-5;
  o.warmup_iters = 100;
  o.decay_iters = 1100;
  o.decay_style = style;
  return o;
}

// Values are the formulas evaluated in the schedule's (Megatron's) order, so
// they agree to the last bit or within EXPECT_DOUBLE_EQ's 4 ulps.
TEST(LrScheduleTest, CosineAtChosenIterations) {
  const LrSchedule s(Base(LrDecayStyle::kCosine));
  const double max = 3e-4, min = 3e-5;
  EXPECT_EQ(s.At(0), 0.0);               // Megatron's first step runs at lr 0
  EXPECT_DOUBLE_EQ(s.At(1), max / 100);  // first warmup increment
  EXPECT_DOUBLE_EQ(s.At(50), max / 2);   // mid-warmup
  EXPECT_EQ(s.At(100), max);             // end of warmup (inclusive)
  EXPECT_DOUBLE_EQ(s.At(101), min + 0.5 * (std::cos(kPi / 1000) + 1) * (max - min));
  EXPECT_DOUBLE_EQ(s.At(350), min + 0.5 * (std::sqrt(0.5) + 1) * (max - min));  // quarter
  EXPECT_DOUBLE_EQ(s.At(600), min + 0.5 * (max - min));                         // mid-decay
  EXPECT_DOUBLE_EQ(s.At(1100), min);  // end of decay: cos(pi) = -1
  EXPECT_EQ(s.At(1101), min);         // past the end
  EXPECT_EQ(s.At(1000000), min);
}

TEST(LrScheduleTest, CosineDecreasesMonotonically) {
  const LrSchedule s(Base(LrDecayStyle::kCosine));
  for (int64_t i = 101; i <= 1200; ++i) EXPECT_LE(s.At(i), s.At(i - 1)) << i;
}

TEST(LrScheduleTest, Linear) {
  const LrSchedule s(Base(LrDecayStyle::kLinear));
  const double max = 3e-4, min = 3e-5;
  EXPECT_DOUBLE_EQ(s.At(50), max / 2);
  EXPECT_EQ(s.At(100), max);
  EXPECT_DOUBLE_EQ(s.At(350), min + 0.75 * (max - min));
  EXPECT_DOUBLE_EQ(s.At(600), min + 0.5 * (max - min));
  EXPECT_DOUBLE_EQ(s.At(1100), min);
  EXPECT_EQ(s.At(2000), min);
}

// Megatron's constant style ignores decay_iters and min_lr: max_lr forever
// after warmup.
TEST(LrScheduleTest, Constant) {
  const LrSchedule s(Base(LrDecayStyle::kConstant));
  EXPECT_DOUBLE_EQ(s.At(50), 1.5e-4);
  EXPECT_EQ(s.At(100), 3e-4);
  EXPECT_EQ(s.At(600), 3e-4);
  EXPECT_EQ(s.At(5000), 3e-4);
}

TEST(LrScheduleTest, InverseSquareRoot) {
  LrSchedule::Options o = Base(LrDecayStyle::kInverseSquareRoot);
  o.min_lr = 5e-5;
  const LrSchedule s(o);
  EXPECT_EQ(s.At(100), 3e-4);
  EXPECT_DOUBLE_EQ(s.At(400), 1.5e-4);  // sqrt(100 / 400)
  EXPECT_DOUBLE_EQ(s.At(900), 1e-4);    // sqrt(100 / 900)
  EXPECT_EQ(s.At(1100), std::max(5e-5, 3e-4 * 10 / std::sqrt(1100.0)));
  EXPECT_EQ(s.At(1101), 5e-5);
}

TEST(LrScheduleTest, WarmupStartsAtWarmupInitLr) {
  LrSchedule::Options o = Base(LrDecayStyle::kCosine);
  o.warmup_init_lr = 1e-5;
  const LrSchedule s(o);
  EXPECT_EQ(s.At(0), 1e-5);
  EXPECT_DOUBLE_EQ(s.At(50), 1e-5 + (3e-4 - 1e-5) * 0.5);
  EXPECT_EQ(s.At(100), 3e-4);
}

TEST(LrScheduleTest, NoWarmupStartsAtMaxLr) {
  LrSchedule::Options o = Base(LrDecayStyle::kCosine);
  o.warmup_iters = 0;
  const LrSchedule s(o);
  EXPECT_EQ(s.At(0), 3e-4);
  EXPECT_DOUBLE_EQ(s.At(550), 3e-5 + 0.5 * (3e-4 - 3e-5));
  EXPECT_EQ(s.At(1101), 3e-5);
}

TEST(LrScheduleTest, ParseStyleUsesMegatronNames) {
  EXPECT_EQ(*ParseLrDecayStyle("cosine"), LrDecayStyle::kCosine);
  EXPECT_EQ(*ParseLrDecayStyle("linear"), LrDecayStyle::kLinear);
  EXPECT_EQ(*ParseLrDecayStyle("constant"), LrDecayStyle::kConstant);
  EXPECT_EQ(*ParseLrDecayStyle("inverse-square-root"), LrDecayStyle::kInverseSquareRoot);
  const auto bad = ParseLrDecayStyle("Cosine");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("lr_decay_style"), std::string::npos);
}

TEST(LrScheduleTest, BadOptionsNameTheField) {
  const auto message = [](auto mutate) {
    LrSchedule::Options o = Base(LrDecayStyle::kCosine);
    mutate(o);
    const absl::Status status = LrSchedule::Validate(o);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  };
  EXPECT_TRUE(LrSchedule::Validate(Base(LrDecayStyle::kCosine)).ok());
  EXPECT_NE(message([](auto& o) { o.min_lr = -1e-5; }).find("min_lr must be >= 0"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) { o.min_lr = 1e-3; }).find("max_lr (0.0003) must be >= min_lr"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) { o.max_lr = INFINITY; }).find("max_lr must be finite"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) { o.warmup_init_lr = 1.0; }).find("warmup_init_lr"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) { o.warmup_iters = -1; }).find("warmup_iters must be >= 0"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) { o.decay_iters = 0; }).find("decay_iters must be > 0"),
            std::string::npos);
  EXPECT_NE(message([](auto& o) {
              o.warmup_iters = 1100;
            }).find("warmup_iters (1100) must be < decay_iters (1100)"),
            std::string::npos);
}

TEST(LrScheduleDeathTest, InvalidOptionsDieAtConstruction) {
  LrSchedule::Options o = Base(LrDecayStyle::kCosine);
  o.decay_iters = -5;
  EXPECT_DEATH(LrSchedule{o}, "decay_iters must be > 0");
}

TEST(LrScheduleDeathTest, NegativeIteration) {
  const LrSchedule s(Base(LrDecayStyle::kCosine));
  EXPECT_DEATH(s.At(-1), "iteration must be >= 0");
}

}  // namespace
}  // namespace moe
