// Writes a randomly initialised model with SaveHfModel, for hf_roundtrip.py
// to load with transformers' MixtralForCausalLM.from_pretrained.
//
//   hf_export_dump CONFIG_JSON SEED OUT_DIR [MAX_SHARD_BYTES]
//
// Exit code 0 on success; 1 with the error on stderr otherwise.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "model/config.h"
#include "model/hf_checkpoint.h"
#include "model/model.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s CONFIG_JSON SEED OUT_DIR [MAX_SHARD_BYTES]\n", argv[0]);
    return 1;
  }
  absl::StatusOr<moe::ModelConfig> config = moe::ModelConfig::FromHfFile(argv[1]);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  moe::Model model(*config);
  model.InitializeWeights(std::strtoull(argv[2], nullptr, 10));
  const int64_t max_shard_bytes = argc == 5 ? std::strtoll(argv[4], nullptr, 10) : 5'000'000'000;
  if (absl::Status s = moe::SaveHfModel(argv[3], model, max_shard_bytes); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}
