// TrainMetrics: every series of a step holds the StepStats value it names;
// counters add up over steps; MFU follows its formula; series that the run
// has not observed yet are absent; other ranks serve only their process
// series; and, when the build has prometheus-cpp, a real HTTP scrape returns
// the text format with those values.
#include "launcher/train_metrics.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <string>

namespace moe {
namespace {

// name{labels} -> value, as a scrape would show them.
std::map<std::string, double> Scrape(const MetricRegistry& registry) {
  std::map<std::string, double> out;
  for (const MetricFamilySnapshot& family : registry.Collect()) {
    for (const MetricSample& sample : family.samples) {
      std::string key = family.name;
      if (!sample.labels.empty()) {
        key += "{";
        for (size_t i = 0; i < sample.labels.size(); ++i) {
          key += (i ? "," : "") + sample.labels[i].first + "=\"" + sample.labels[i].second + "\"";
        }
        key += "}";
      }
      out[key] = sample.value;
    }
  }
  return out;
}

StepStats Stats(int64_t step, double loss) {
  StepStats s;
  s.step = step;
  s.loss = loss;
  s.lm_loss = loss - 0.02;
  s.aux_loss = 2.0;
  s.z_loss = 0.25;
  s.lr = 3e-4;
  s.grad_norm = 1.5;
  s.tokens = 2048;
  s.step_s = 0.5;
  s.tokens_per_s = 4096;
  return s;
}

TEST(TrainMetricsTest, StepSeriesHoldTheStepStats) {
  TrainMetrics metrics(TrainMetricsOptions{0, 4, 1000000, 2.0});
  metrics.ObserveStep(Stats(7, 4.0));
  StepStats second = Stats(8, 3.5);
  second.skipped = true;
  second.val_loss = 3.25;
  metrics.ObserveStep(second);

  std::map<std::string, double> m = Scrape(metrics.registry());
  EXPECT_EQ(m["moe_train_loss"], 3.5);
  EXPECT_EQ(m["moe_train_lm_loss"], 3.48);
  EXPECT_EQ(m["moe_train_aux_loss"], 2.0);
  EXPECT_EQ(m["moe_train_z_loss"], 0.25);
  EXPECT_EQ(m["moe_train_learning_rate"], 3e-4);
  EXPECT_EQ(m["moe_train_grad_norm"], 1.5);
  EXPECT_EQ(m["moe_train_step"], 8);
  EXPECT_EQ(m["moe_train_steps_total"], 2);
  EXPECT_EQ(m["moe_train_skipped_steps_total"], 1);
  EXPECT_EQ(m["moe_train_tokens_total"], 4096);
  EXPECT_EQ(m["moe_train_step_seconds"], 0.5);
  EXPECT_EQ(m["moe_train_step_seconds_total"], 1.0);
  EXPECT_EQ(m["moe_train_tokens_per_second"], 4096);
  EXPECT_EQ(m["moe_train_validation_loss"], 3.25);
  // 6 * 1e6 active parameters * 2048 tokens / 0.5 s, over 2 TFLOP/s x 4 ranks.
  EXPECT_DOUBLE_EQ(m["moe_train_model_flops_per_second"], 6 * 1e6 * 2048 / 0.5);
  EXPECT_DOUBLE_EQ(m["moe_train_mfu_ratio"], 6 * 1e6 * 2048 / 0.5 / (2e12 * 4));
  EXPECT_GT(m["moe_train_last_step_timestamp_seconds"], 1.6e9);
  EXPECT_EQ(m["moe_train_up{rank=\"0\"}"], 1);
  EXPECT_GT(m["moe_train_resident_memory_bytes{rank=\"0\"}"], 1e5);
  EXPECT_GE(m["moe_train_peak_resident_memory_bytes{rank=\"0\"}"],
            m["moe_train_resident_memory_bytes{rank=\"0\"}"]);
}

TEST(TrainMetricsTest, UnobservedSeriesAreAbsentNotZero) {
  TrainMetrics metrics(TrainMetricsOptions{0, 1, 10, 0.0});
  metrics.ObserveStep(Stats(1, 4.0));
  std::map<std::string, double> m = Scrape(metrics.registry());
  EXPECT_EQ(m.count("moe_train_validation_loss"), 0u);
  EXPECT_EQ(m.count("moe_train_checkpoint_save_seconds"), 0u);
  EXPECT_EQ(m.count("moe_train_mfu_ratio"), 0u);  // no --mfu_peak_tflops
  EXPECT_EQ(m.count("moe_train_communication_exposed_seconds_total"), 0u);
  EXPECT_EQ(m["moe_train_checkpoint_saves_total"], 0);

  metrics.ObserveCheckpointSave(1.25);
  metrics.ObserveCheckpointSave(0.75);
  metrics.ObserveCommunication(0.1, 0.3);
  metrics.ObserveCommunication(0.1, 0.2);
  m = Scrape(metrics.registry());
  EXPECT_EQ(m["moe_train_checkpoint_save_seconds"], 0.75);
  EXPECT_EQ(m["moe_train_checkpoint_saves_total"], 2);
  EXPECT_DOUBLE_EQ(m["moe_train_communication_exposed_seconds_total"], 0.2);
  EXPECT_DOUBLE_EQ(m["moe_train_communication_hidden_seconds_total"], 0.5);
}

TEST(TrainMetricsTest, ExpertCountersAreLabelledByLayerAndExpert) {
  TrainMetrics metrics(TrainMetricsOptions{0, 1, 10, 0.0});
  metrics.ObserveExperts({{5, 3, 0}, {1, 1, 6}}, {{1, 0, 0}, {0, 0, 2}});
  metrics.ObserveExperts({{1, 1, 1}, {2, 0, 1}}, {{0, 0, 0}, {0, 0, 1}});
  std::map<std::string, double> m = Scrape(metrics.registry());
  EXPECT_EQ(m["moe_train_expert_tokens_total{layer=\"0\",expert=\"0\"}"], 6);
  EXPECT_EQ(m["moe_train_expert_tokens_total{layer=\"0\",expert=\"2\"}"], 1);
  EXPECT_EQ(m["moe_train_expert_tokens_total{layer=\"1\",expert=\"2\"}"], 7);
  EXPECT_EQ(m["moe_train_expert_dropped_tokens_total{layer=\"1\",expert=\"2\"}"], 3);
  EXPECT_EQ(m["moe_train_expert_dropped_tokens_total{layer=\"0\",expert=\"0\"}"], 1);
}

TEST(TrainMetricsDeathTest, ExpertShapeIsFixedByTheFirstCall) {
  TrainMetrics metrics(TrainMetricsOptions{0, 1, 10, 0.0});
  metrics.ObserveExperts({{1, 2}}, {{0, 0}});
  EXPECT_DEATH(metrics.ObserveExperts({{1, 2, 3}}, {{0, 0, 0}}), "layer 0 has 3 experts");
  EXPECT_DEATH(metrics.ObserveExperts({{1, 2}}, {}), "1 layers of tokens but 0 of dropped");
}

TEST(TrainMetricsTest, OtherRanksServeOnlyTheirProcessSeries) {
  TrainMetrics metrics(TrainMetricsOptions{3, 4, 10, 1.0});
  metrics.ObserveStep(Stats(1, 4.0));
  metrics.ObserveCheckpointSave(1.0);
  std::map<std::string, double> m = Scrape(metrics.registry());
  EXPECT_EQ(m.count("moe_train_loss"), 0u);
  EXPECT_EQ(m.count("moe_train_steps_total"), 0u);
  EXPECT_EQ(m["moe_train_up{rank=\"3\"}"], 1);
  EXPECT_EQ(m.size(), 4u) << "up, start time, memory, peak memory";
}

// A plain HTTP GET on localhost.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  if (write(fd, request.data(), request.size()) < 0) return "";
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

TEST(TrainMetricsTest, ServesTheTextFormatOverHttp) {
  if (!MetricsServer::Available()) GTEST_SKIP() << "built without prometheus-cpp";
  TrainMetrics metrics(TrainMetricsOptions{0, 1, 10, 0.0});
  // Port 0: any free port; Serve adds the rank (0).
  ASSERT_TRUE(metrics.Serve(0).ok());
  ASSERT_GT(metrics.port(), 0);
  metrics.ObserveStep(Stats(1, 4.0));
  const std::string body = HttpGet(metrics.port(), "/metrics");
  EXPECT_NE(body.find("200 OK"), std::string::npos) << body;
  EXPECT_NE(body.find("# TYPE moe_train_steps_total counter"), std::string::npos) << body;
  EXPECT_NE(body.find("moe_train_loss 4\n"), std::string::npos) << body;
  EXPECT_NE(body.find("moe_train_up{rank=\"0\"} 1"), std::string::npos) << body;

  // A second server on the same port: the error names the flag and port.
  TrainMetrics other(TrainMetricsOptions{0, 1, 10, 0.0});
  const absl::Status taken = other.Serve(metrics.port());
  ASSERT_FALSE(taken.ok());
  EXPECT_NE(taken.message().find("--metrics_port=" + std::to_string(metrics.port())),
            std::string::npos)
      << taken;
}

}  // namespace
}  // namespace moe
