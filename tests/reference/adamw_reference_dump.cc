// Runs our AdamW for a few steps on fp32 parameters with random gradients and
// writes, per configuration, everything torch.optim.AdamW needs to replay it
// and our results to compare with (adamw_reference.py does both):
//
//   OUT_DIR/<config>/manifest.json   hyperparameters, lrs, parameter names/shapes/decay
//   OUT_DIR/<config>/p<i>_init.npy   initial values
//   OUT_DIR/<config>/g<i>_<s>.npy    gradient of parameter i at step s (1-based)
//   OUT_DIR/<config>/p<i>.npy, m<i>.npy, v<i>.npy   our values, exp_avg, exp_avg_sq at the end
//
//   adamw_reference_dump OUT_DIR
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/io/npy.h"
#include "core/optim/adamw.h"
#include "tests/test_util.h"

namespace moe {
namespace {

constexpr int kSteps = 5;
constexpr double kLrs[kSteps] = {1e-3, 3e-3, 2e-2, 5e-4, 1e-2};

void WriteNpyOrDie(const std::string& path, const Tensor& t) {
  const absl::Status status = WriteNpy(path, t);
  MOE_CHECK(status.ok()) << status.message();
}

void Dump(const std::string& dir, const AdamW::Options& options) {
  MOE_CHECK(mkdir(dir.c_str(), 0755) == 0) << "cannot create " << dir;
  // Odd sizes reach the vector loops' tails; the largest is above the
  // optimizer's threshold for the OpenMP path.
  const std::vector<std::pair<std::string, Shape>> specs = {
      {"layers.0.mlp.w1.weight", {33, 17}},
      {"layers.0.input_layernorm.weight", {17}},
      {"layers.0.mlp.w2.weight", {256, 161}},
      {"lm_head.weight", {5, 3}}};
  std::vector<std::unique_ptr<Parameter>> params;
  std::vector<Parameter*> pointers;
  for (size_t i = 0; i < specs.size(); ++i) {
    params.push_back(
        std::make_unique<Parameter>(specs[i].first, specs[i].second, DType::kF32, Device::kCpu));
    params[i]->value.CopyFrom(testing::RandomTensor(specs[i].second, DType::kF32, 10 + i));
    pointers.push_back(params[i].get());
    WriteNpyOrDie(dir + "/p" + std::to_string(i) + "_init.npy", params[i]->value);
  }
  AdamW adamw(pointers, options);
  for (int step = 1; step <= kSteps; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      Parameter& p = *params[i];
      p.grad.CopyFrom(testing::RandomTensor(p.value.shape(), DType::kF32, 1000 * step + i,
                                            0.05 * (1 + step + static_cast<double>(i))));
      WriteNpyOrDie(dir + "/g" + std::to_string(i) + "_" + std::to_string(step) + ".npy", p.grad);
    }
    adamw.Step(kLrs[step - 1]);
  }
  std::ostringstream manifest;
  manifest.precision(17);
  manifest << "{\"steps\": " << kSteps << ", \"lrs\": [";
  for (int s = 0; s < kSteps; ++s) manifest << (s ? ", " : "") << kLrs[s];
  manifest << "], \"beta1\": " << options.beta1 << ", \"beta2\": " << options.beta2
           << ", \"eps\": " << options.eps << ", \"weight_decay\": " << options.weight_decay
           << ", \"params\": [";
  for (size_t i = 0; i < params.size(); ++i) {
    WriteNpyOrDie(dir + "/p" + std::to_string(i) + ".npy", params[i]->value);
    WriteNpyOrDie(dir + "/m" + std::to_string(i) + ".npy", adamw.state(i).exp_avg);
    WriteNpyOrDie(dir + "/v" + std::to_string(i) + ".npy", adamw.state(i).exp_avg_sq);
    manifest << (i ? ", " : "") << "{\"name\": \"" << params[i]->name
             << "\", \"decay\": " << (adamw.state(i).decay ? "true" : "false") << "}";
  }
  manifest << "]}\n";
  std::ofstream(dir + "/manifest.json") << manifest.str();
  std::printf("wrote %s\n", dir.c_str());
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  moe::AdamW::Options defaults;  // torch.optim.AdamW's defaults too
  moe::Dump(out + "/default", defaults);
  // beta1 < 0.5 takes torch.lerp's other branch; large decay and eps make
  // both terms count.
  moe::AdamW::Options other;
  other.beta1 = 0.3;
  other.beta2 = 0.95;
  other.eps = 1e-3;
  other.weight_decay = 0.5;
  moe::Dump(out + "/other", other);
  return 0;
}
