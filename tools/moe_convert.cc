// moe-convert: moe-train checkpoints to and from Hugging Face Mixtral.
//
//   moe-convert --to_hf --load=CKPT --out=DIR [--max_shard_bytes=N]
//   moe-convert --from_hf --hf_dir=DIR --save=CKPT
//
// --to_hf reads the weights of a checkpoint (CKPT: a --save directory, whose
// latest is taken, or one iter_* directory; saved under any layout) and
// writes config.json and model.safetensors, or shards of at most
// --max_shard_bytes with model.safetensors.index.json, which
// MixtralForCausalLM.from_pretrained loads. The optimizer state is left out.
// --from_hf writes a checkpoint of the Hugging Face model at step 0 without
// optimizer state: `moe-train --load=CKPT` trains from those weights (as
// `moe-train --init_from_hf=DIR` does without the conversion).
//
// Nothing is overwritten: --out must be new or empty, --save must not hold a
// checkpoint yet. Exit codes: 0 done; 2 a bad flag; 1 a bad input or a
// failed write (one line on stderr naming the file and what to do).
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "launcher/checkpoint.h"
#include "model/hf_checkpoint.h"
#include "model/model.h"

ABSL_FLAG(bool, to_hf, false, "Convert the checkpoint --load into a Hugging Face folder --out.");
ABSL_FLAG(bool, from_hf, false,
          "Convert the Hugging Face folder --hf_dir into a checkpoint --save.");
ABSL_FLAG(
    std::string, load, "",
    "--to_hf: the checkpoint, a --save directory of moe-train or one iter_* directory in it.");
ABSL_FLAG(std::string, out, "", "--to_hf: the Hugging Face folder to write (new or empty).");
ABSL_FLAG(int64_t, max_shard_bytes, 5'000'000'000,
          "--to_hf: largest model-*.safetensors shard; a model that fits is one "
          "model.safetensors.");
ABSL_FLAG(std::string, hf_dir, "",
          "--from_hf: a Hugging Face Mixtral folder (config.json and model.safetensors, or shards "
          "and their index).");
ABSL_FLAG(std::string, save, "",
          "--from_hf: the checkpoint directory to write (it must not hold a checkpoint yet).");

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

struct Failure {
  int code;
  absl::Status status;
};

absl::Status Usage(const std::string& message) { return absl::InvalidArgumentError(message); }

absl::Status Require(const char* flag, const std::string& value, const char* mode,
                     const char* example) {
  if (!value.empty()) return absl::OkStatus();
  return Usage(absl::StrCat(mode, " needs --", flag, ", e.g. --", flag, "=", example));
}

// Refuses an --out that holds anything: a Hugging Face folder is never merged into.
absl::Status CheckNewOrEmpty(const std::string& out) {
  std::error_code error;
  if (!fs::exists(out, error)) return absl::OkStatus();
  if (!fs::is_directory(out, error)) {
    return absl::AlreadyExistsError(
        absl::StrCat("--out=", out, " is a file; pass a new or empty directory"));
  }
  if (!fs::is_empty(out, error)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "--out=", out, " is not empty; nothing was written: pass a new or empty directory"));
  }
  return absl::OkStatus();
}

Failure ToHf() {
  const std::string load = absl::GetFlag(FLAGS_load);
  const std::string out = absl::GetFlag(FLAGS_out);
  const int64_t max_shard = absl::GetFlag(FLAGS_max_shard_bytes);
  for (const absl::Status& s :
       {Require("load", load, "--to_hf", "out/run/checkpoints"),
        Require("out", out, "--to_hf", "out/run/hf"),
        max_shard > 0 ? absl::OkStatus()
                      : Usage(absl::StrCat("--max_shard_bytes must be positive, got ", max_shard,
                                           "; e.g. --max_shard_bytes=5000000000"))}) {
    if (!s.ok()) return {kExitUsage, s};
  }
  if (absl::Status s = CheckNewOrEmpty(out); !s.ok()) return {kExitFailure, s};
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModelFromCheckpoint(load);
  if (!model.ok()) return {kExitFailure, model.status()};
  if (absl::Status s = SaveHfModel(out, **model, max_shard); !s.ok()) return {kExitFailure, s};
  std::cout << "moe-convert: wrote " << out << " (config.json and the weights, "
            << (*model)->NumParameters() << " parameters) from " << load
            << "; load it with MixtralForCausalLM.from_pretrained(\"" << out << "\")" << std::endl;
  return {0, absl::OkStatus()};
}

Failure FromHf() {
  const std::string hf_dir = absl::GetFlag(FLAGS_hf_dir);
  const std::string save = absl::GetFlag(FLAGS_save);
  for (const absl::Status& s : {Require("hf_dir", hf_dir, "--from_hf", "path/to/Mixtral"),
                                Require("save", save, "--from_hf", "out/run/checkpoints")}) {
    if (!s.ok()) return {kExitUsage, s};
  }
  absl::StatusOr<std::unique_ptr<Model>> model = LoadHfModel(hf_dir);
  if (!model.ok()) {
    return {kExitFailure,
            absl::Status(model.status().code(),
                         absl::StrCat("--hf_dir=", hf_dir, ": ", model.status().message()))};
  }
  absl::StatusOr<CheckpointSaveInfo> saved =
      SaveModelCheckpoint(save, **model, "moe-convert --from_hf");
  if (!saved.ok()) {
    return {kExitFailure,
            absl::Status(saved.status().code(),
                         absl::StrCat("--save=", save, ": ", saved.status().message()))};
  }
  std::cout << "moe-convert: wrote " << saved->path << " (" << (*model)->NumParameters()
            << " parameters, step 0, no optimizer state) from " << hf_dir
            << "; train from it with moe-train --load=" << save << " and the model's flags"
            << std::endl;
  return {0, absl::OkStatus()};
}

Failure Run() {
  const bool to_hf = absl::GetFlag(FLAGS_to_hf);
  const bool from_hf = absl::GetFlag(FLAGS_from_hf);
  if (to_hf == from_hf) {
    return {kExitUsage,
            Usage("pass exactly one of --to_hf (checkpoint -> Hugging Face) and --from_hf "
                  "(Hugging Face -> checkpoint); see --help")};
  }
  return to_hf ? ToHf() : FromHf();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "converts moe-train checkpoints to and from Hugging Face Mixtral.\n"
      "  moe-convert --to_hf --load=CKPT --out=DIR [--max_shard_bytes=N]\n"
      "  moe-convert --from_hf --hf_dir=DIR --save=CKPT");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr,
                 "moe-convert: error: unexpected argument \"%s\"; every input is a --flag\n",
                 rest[1]);
    return 2;
  }
  const moe::Failure result = moe::Run();
  if (!result.status.ok()) {
    std::fprintf(stderr, "moe-convert: error: %s\n", std::string(result.status.message()).c_str());
  }
  return result.code;
}
