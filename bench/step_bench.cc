// One full training step of the Mixtral model on the CPU in fp32:
// Model::ForwardBackward on the whole batch (LossScales{1 / tokens, 1, 0}, as
// the trainer sets them for one micro-batch) + AdamW::Step (which zeroes the
// gradients). The same run also measures this machine's sgemm peak, so the
// step's GFLOP/s can be read as a fraction of what OpenBLAS reaches. The
// PyTorch peer is timed by step_vs_pytorch.py, which runs this binary.
//
//   step_bench [--config=A|B|C|all] [--warmup=N] [--repeats=N] [--json]
//
// Threads: OMP_NUM_THREADS (OpenBLAS is the OpenMP build, so it follows too).
// Prints one line per config; with --json one JSON object per line.
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/optim/adamw.h"
#include "core/philox.h"
#include "model/model.h"

namespace moe {
namespace {

struct StepConfig {
  const char* name;
  int64_t hidden, ffn, layers, experts, top_k, seq, batch;
};

// Byte-level vocabulary (257) as in our recipes. Attention: hidden / 64 heads
// of head_dim 64 with 2 query groups (so C has 2 heads and 2 groups, i.e. no
// sharing). Kept in sync with CONFIGS in step_vs_pytorch.py.
const std::vector<StepConfig> kConfigs = {
    {"A", 256, 512, 4, 8, 2, 256, 4},
    {"B", 256, 512, 4, 32, 4, 256, 4},
    {"C", 128, 256, 2, 8, 2, 256, 4},
};

ModelConfig ToModelConfig(const StepConfig& c) {
  ModelConfig config;
  config.vocab_size = 257;
  config.hidden_size = c.hidden;
  config.intermediate_size = c.ffn;
  config.num_hidden_layers = c.layers;
  config.num_attention_heads = c.hidden / 64;
  config.num_key_value_heads = 2;
  config.num_local_experts = c.experts;
  config.num_experts_per_tok = c.top_k;
  config.max_position_embeddings = c.seq;
  config.rope_theta = 10000;
  config.router_aux_loss_coef = 0.01;
  return config;
}

// Samples of seq + 1 token ids uniform in [0, vocab) from Philox(1, 1),
// split as the trainer does: ids = sample[:seq], labels = sample[1:].
void RandomSamples(int64_t batch, int64_t seq, int64_t vocab, Tensor* ids, Tensor* labels) {
  const Philox philox(/*seed=*/1, /*stream=*/1);
  *ids = Tensor::Empty({batch, seq}, DType::kI32);
  *labels = Tensor::Empty({batch, seq}, DType::kI32);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s <= seq; ++s) {
      const uint64_t counter = static_cast<uint64_t>(b * (seq + 1) + s);
      const auto id = static_cast<int32_t>(philox.Block(counter)[0] % static_cast<uint32_t>(vocab));
      if (s < seq) ids->data<int32_t>()[b * seq + s] = id;
      if (s > 0) labels->data<int32_t>()[b * seq + s - 1] = id;
    }
  }
}

// Median GFLOP/s of a square 2048 sgemm with every thread.
bench::Timing SgemmPeak(int repeats) {
  const int n = 2048;
  Tensor a = Tensor::Empty({n, n}, DType::kF32);
  InitNormal(&a, ShardSlice::Whole(a.shape()), 1, 7, 0.0, 1.0);
  Tensor c = Tensor::Empty({n, n}, DType::kF32);
  const float* pa = a.data<float>();
  float* pc = c.data<float>();
  return bench::Measure(
      [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, pa, n, pa, n, 0.0f, pc,
                    n);
      },
      /*warmup=*/3, repeats);
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  using namespace moe;
  std::string which = "all";
  int warmup = 2, repeats = 7;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--config=", 9) == 0) which = argv[i] + 9;
    if (std::strncmp(argv[i], "--warmup=", 9) == 0) warmup = std::atoi(argv[i] + 9);
    if (std::strncmp(argv[i], "--repeats=", 10) == 0) repeats = std::atoi(argv[i] + 10);
    if (std::strcmp(argv[i], "--json") == 0) json = true;
  }
  const double sgemm_flops = 2.0 * 2048.0 * 2048.0 * 2048.0;
  const double sgemm_gflops = sgemm_flops / SgemmPeak(repeats).median_s / 1e9;
  if (!json) {
    std::printf(
        "threads %d; one training step (forward+backward+AdamW), median of %d "
        "[min..max]; sgemm peak %.1f GFLOP/s\n",
        omp_get_max_threads(), repeats, sgemm_gflops);
  }
  bool found = false;
  for (const StepConfig& c : kConfigs) {
    if (which != "all" && which != c.name) continue;
    found = true;
    const ModelConfig config = ToModelConfig(c);
    Model model(config, DType::kF32);
    model.InitializeWeights(/*seed=*/1234);
    // torch.optim.AdamW's defaults except weight decay, which is the recipes'.
    AdamW::Options options;
    options.weight_decay = 0.1;
    AdamW optimizer(model.Parameters(), options);
    Tensor ids, labels;
    RandomSamples(c.batch, c.seq, config.vocab_size, &ids, &labels);
    const int64_t tokens = c.batch * c.seq;
    const LossScales scales{.lm = 1.0 / static_cast<double>(tokens), .aux = 1.0, .z = 0.0};
    double loss = 0;
    const bench::Timing t = bench::Measure(
        [&] {
          const Losses losses = model.ForwardBackward(ids, labels, scales);
          loss = losses.lm_loss_sum * scales.lm;
          optimizer.Step(1e-4);
        },
        warmup, repeats);

    // FLOPs of one step: 6 per active parameter per token (2 forward, 4
    // backward; the embedding lookup is counted as if it were a GEMM, which
    // overcounts by vocab * hidden * tokens * 6, under 1% here), plus causal
    // attention: QK^T and PV are 2 * 2 * seq^2 * head_dim FLOPs per head
    // forward, backward twice that, and the causal mask halves it:
    //   6 * 2 * layers * batch * seq^2 * heads * head_dim / 2.
    const double heads = static_cast<double>(config.num_attention_heads);
    const double head_dim = static_cast<double>(config.resolved_head_dim());
    const double flops =
        6.0 * static_cast<double>(model.NumActiveParameters()) * static_cast<double>(tokens) +
        6.0 * 2.0 * c.layers * c.batch * static_cast<double>(c.seq) * c.seq * heads * head_dim /
            2.0;
    const double gflops = flops / t.median_s / 1e9;
    if (json) {
      std::printf(
          "{\"config\": \"%s\", \"hidden\": %lld, \"ffn\": %lld, \"layers\": %lld, "
          "\"experts\": %lld, \"top_k\": %lld, \"seq\": %lld, \"batch\": %lld, \"heads\": %lld, "
          "\"kv_heads\": %lld, \"threads\": %d, \"active_params\": %lld, \"flops\": %.6g, "
          "\"step_s\": %.6g, \"step_min_s\": %.6g, \"step_max_s\": %.6g, \"gflops\": %.6g, "
          "\"sgemm_gflops\": %.6g, \"loss\": %.6g}\n",
          c.name, static_cast<long long>(c.hidden), static_cast<long long>(c.ffn),
          static_cast<long long>(c.layers), static_cast<long long>(c.experts),
          static_cast<long long>(c.top_k), static_cast<long long>(c.seq),
          static_cast<long long>(c.batch), static_cast<long long>(config.num_attention_heads),
          static_cast<long long>(config.num_key_value_heads), omp_get_max_threads(),
          static_cast<long long>(model.NumActiveParameters()), flops, t.median_s, t.min_s, t.max_s,
          gflops, sgemm_gflops, loss);
    } else {
      std::printf("%s: %.4f s/step [%.4f..%.4f]  %.1f GFLOP/s = %.2f of sgemm peak\n", c.name,
                  t.median_s, t.min_s, t.max_s, gflops, gflops / sgemm_gflops);
    }
    std::fflush(stdout);
  }
  MOE_CHECK(found) << "step_bench: unknown --config=" << which << " (A, B, C or all)";
  return 0;
}
