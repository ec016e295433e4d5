// The cost of moe-train's Prometheus metrics against the step they observe.
//
//   build/bin/metrics_bench [--repeats=N]
//
// Measures, in one run: (a) TrainMetrics::ObserveStep, what the training
// thread pays per step; (b) one whole HTTP scrape of the exporter (request,
// collection, text serialization), which runs on the exporter's own thread;
// (c) one training step of the mixtral-tiny recipe's shape (2 micro-batches
// of 8 x 128 tokens, forward + backward, no optimizer: a lower bound of the
// real step, so the ratios below are upper bounds). It prints the overhead
// of metrics on the step: (a) / (c), and with a scrape every 5 s (the
// shipped prometheus.yml) the scrape's share of the cores, (b) / 5 s.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "bench/bench_util.h"
#include "core/philox.h"
#include "launcher/train_metrics.h"
#include "model/model.h"

namespace moe {
namespace {

std::string Scrape(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[8192];
      ssize_t n;
      while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
    }
  }
  close(fd);
  return response;
}

int Main(int repeats) {
  ModelConfig config;  // examples/recipes/mixtral-tiny.flags
  config.vocab_size = 257;
  config.hidden_size = 128;
  config.intermediate_size = 256;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.num_local_experts = 8;
  config.num_experts_per_tok = 2;
  config.max_position_embeddings = 128;
  config.rope_theta = 10000;
  config.router_aux_loss_coef = 0.01;
  Model model(config);
  model.InitializeWeights(1234);
  const int64_t batch = 8;
  const int64_t seq = 128;
  Tensor ids = Tensor::Empty({batch, seq}, DType::kI32);
  Tensor labels = Tensor::Empty({batch, seq}, DType::kI32);
  const Philox philox(/*seed=*/1, /*stream=*/1);
  for (int64_t i = 0; i < batch * seq; ++i) {
    ids.data<int32_t>()[i] = static_cast<int32_t>(philox.Block(2 * i)[0] % 257);
    labels.data<int32_t>()[i] = static_cast<int32_t>(philox.Block(2 * i + 1)[0] % 257);
  }
  LossScales scales;
  scales.lm = 1.0 / (2 * batch * seq);
  scales.aux = scales.z = 0.5;

  TrainMetrics metrics(TrainMetricsOptions{0, 1, model.NumActiveParameters(), 1.0});
  if (absl::Status s = metrics.Serve(0); !s.ok()) {
    std::fprintf(stderr, "metrics_bench: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  StepStats stats;
  stats.loss = 2.5;
  stats.tokens = 2 * batch * seq;
  stats.step_s = 0.1;
  stats.tokens_per_s = 20480;
  constexpr int kObservations = 1000;
  int64_t step = 0;
  const bench::Timing observe = bench::Measure(
      [&] {
        for (int i = 0; i < kObservations; ++i) {
          stats.step = ++step;
          metrics.ObserveStep(stats);
        }
      },
      3, repeats);
  size_t bytes = 0;
  const bench::Timing scrape =
      bench::Measure([&] { bytes = Scrape(metrics.port()).size(); }, 3, repeats);
  const bench::Timing train_step = bench::Measure(
      [&] {
        for (int m = 0; m < 2; ++m) model.ForwardBackward(ids, labels, scales);
      },
      2, repeats);

  const double per_observe = observe.median_s / kObservations;
  std::printf("ObserveStep          %8.3f us   [%.3f..%.3f]\n", per_observe * 1e6,
              observe.min_s / kObservations * 1e6, observe.max_s / kObservations * 1e6);
  std::printf("HTTP scrape          %8.3f ms   [%.3f..%.3f] (%zu bytes)\n", scrape.median_s * 1e3,
              scrape.min_s * 1e3, scrape.max_s * 1e3, bytes);
  std::printf("mixtral-tiny step    %8.3f ms   [%.3f..%.3f] (forward+backward, 2048 tokens)\n",
              train_step.median_s * 1e3, train_step.min_s * 1e3, train_step.max_s * 1e3);
  std::printf("overhead on the training thread: %.2e of the step\n",
              per_observe / train_step.median_s);
  std::printf("scrape every 5 s: %.2e of one core\n", scrape.median_s / 5.0);
  return 0;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  int repeats = 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--repeats=", 10) == 0) repeats = std::atoi(argv[i] + 10);
  }
  return moe::Main(repeats);
}
