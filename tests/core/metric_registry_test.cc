// MetricRegistry: families and series as a scrape sees them, counters that
// only go up, values read at scrape time, and one message per broken naming
// rule (Prometheus' rules and conventions).
#include "core/metrics/metric_registry.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace moe {
namespace {

TEST(MetricRegistryTest, CollectsFamiliesInOrderWithTheirSeries) {
  MetricRegistry registry;
  Gauge* loss = registry.AddGauge("moe_loss", "Loss.");
  Counter* a = registry.AddCounter("moe_tokens_total", "Tokens.", {{"expert", "0"}});
  Counter* b = registry.AddCounter("moe_tokens_total", "Tokens.", {{"expert", "1"}});
  double memory = 42;
  registry.AddGaugeCallback("moe_memory_bytes", "Memory.", {{"rank", "3"}},
                            [&memory] { return memory; });
  loss->Set(2.5);
  a->Increment();
  a->Increment(2);
  b->Increment(0.5);
  memory = 43;  // read at collection, not when added

  const std::vector<MetricFamilySnapshot> families = registry.Collect();
  ASSERT_EQ(families.size(), 3u);
  EXPECT_EQ(families[0].name, "moe_loss");
  EXPECT_EQ(families[0].type, MetricType::kGauge);
  EXPECT_EQ(families[0].samples[0].value, 2.5);
  EXPECT_EQ(families[1].type, MetricType::kCounter);
  ASSERT_EQ(families[1].samples.size(), 2u);
  EXPECT_EQ(families[1].samples[0].labels, (MetricLabels{{"expert", "0"}}));
  EXPECT_EQ(families[1].samples[0].value, 3);
  EXPECT_EQ(families[1].samples[1].value, 0.5);
  EXPECT_EQ(families[2].samples[0].value, 43);
  EXPECT_EQ(families[2].help, "Memory.");
}

TEST(MetricRegistryTest, UpdatesFromManyThreadsAreNotLost) {
  MetricRegistry registry;
  Counter* counter = registry.AddCounter("moe_events_total", "Events.");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([counter] {
      for (int i = 0; i < 10000; ++i) counter->Increment();
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(counter->value(), 40000);
}

TEST(MetricRegistryDeathTest, EnforcesPrometheusNamesAndConventions) {
  MetricRegistry registry;
  registry.AddGauge("moe_x", "X.");
  EXPECT_DEATH(registry.AddGauge("9lives", "Bad."), "not a Prometheus metric name");
  EXPECT_DEATH(registry.AddGauge("moe-x", "Bad."), "not a Prometheus metric name");
  EXPECT_DEATH(registry.AddCounter("moe_steps", "Steps."),
               "counters, and only counters, end in _total");
  EXPECT_DEATH(registry.AddGauge("moe_steps_total", "Steps."), "counters, and only counters");
  EXPECT_DEATH(registry.AddGauge("moe_y", "Y.", {{"__reserved", "1"}}), "not a valid label name");
  EXPECT_DEATH(registry.AddGauge("moe_y", "Y.", {{"a-b", "1"}}), "not a valid label name");
  EXPECT_DEATH(registry.AddGauge("moe_x", "X."), "already has a series with these labels");
  EXPECT_DEATH(registry.AddGauge("moe_x", "Other help.", {{"k", "v"}}), "shares both");
  EXPECT_DEATH(registry.AddCounter("moe_x_total", "X.")->Increment(-1), "only goes up");
}

}  // namespace
}  // namespace moe
