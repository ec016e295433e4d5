// moe-eval: the logits and next-token loss of a Hugging Face Mixtral
// checkpoint on given token ids, to compare with transformers or to score a
// trained model.
//
//   moe-eval --hf_dir=DIR --input_ids=IDS.npy [--logits_out=L.npy] [--batch_chunk=N]
//
// IDS.npy holds integer ids [batch, seq] (1-D: one sequence). The loss is
// transformers' `model(ids, labels=ids).loss`: position s predicts ids[s + 1],
// averaged over the batch * (seq - 1) predicted tokens (no router aux loss).
// stdout gets exactly one JSON line {"loss": L, "tokens": N} (loss is null
// when seq is 1); progress and errors go to stderr, and every error exits 1
// with a one-line message.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "core/io/npy.h"
#include "core/json.h"
#include "model/hf_checkpoint.h"
#include "model/model.h"

ABSL_FLAG(std::string, hf_dir, "",
          "Hugging Face Mixtral directory: config.json and model.safetensors (or shards with "
          "model.safetensors.index.json)");
ABSL_FLAG(std::string, input_ids, "", ".npy file of integer token ids, [batch, seq] or [seq]");
ABSL_FLAG(std::string, logits_out, "",
          "if set, write the fp32 logits [batch, seq, vocab] to this .npy file");
ABSL_FLAG(int64_t, batch_chunk, 0,
          "sequences per forward pass, to bound memory; 0 runs the whole batch at once");

namespace moe {
namespace {

// Token ids as kI32 [batch, seq], checked against the model's vocabulary and
// context length.
absl::StatusOr<Tensor> ReadIds(const std::string& path, const ModelConfig& config) {
  absl::StatusOr<Tensor> read = ReadNpy(path);
  if (!read.ok()) return read.status();
  Tensor ids = *std::move(read);
  if (ids.dtype() != DType::kI32 && ids.dtype() != DType::kI64) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds ", ids.Describe(),
                                                   "; token ids must be integers: save them with ",
                                                   "numpy.save(path, ids.astype(numpy.int64))"));
  }
  if (ids.ndim() == 1) ids = ids.Reshape({1, ids.dim(0)});
  if (ids.ndim() != 2 || ids.dim(0) == 0 || ids.dim(1) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds ids of shape ", ids.ShapeString(),
                     "; expected a non-empty [batch, seq] array (or [seq] for one sequence)"));
  }
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  if (seq > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has sequences of ", seq, " tokens, longer than the model's ",
                     "max_position_embeddings (", config.max_position_embeddings,
                     "); split them into sequences of at most that length"));
  }
  Tensor ids32 = Tensor::Empty({batch, seq}, DType::kI32);
  int32_t* out = ids32.data<int32_t>();
  for (int64_t i = 0; i < batch * seq; ++i) {
    const int64_t id = ids.dtype() == DType::kI32 ? ids.data<int32_t>()[i] : ids.data<int64_t>()[i];
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": token id ", id, " at [", i / seq, ", ", i % seq,
                       "] is outside the ", "vocabulary [0, ", config.vocab_size,
                       "); the ids were made with a different tokenizer "
                       "than this model's"));
    }
    out[i] = static_cast<int32_t>(id);
  }
  return ids32;
}

// labels[b, s] = ids[b, s + 1]; the last position predicts nothing (-100).
Tensor NextTokenLabels(const Tensor& ids) {
  const int64_t batch = ids.dim(0), seq = ids.dim(1);
  Tensor labels = Tensor::Empty({batch, seq}, DType::kI32);
  const int32_t* in = ids.data<int32_t>();
  int32_t* out = labels.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      out[b * seq + s] = s + 1 < seq ? in[b * seq + s + 1] : -100;
    }
  }
  return labels;
}

absl::Status Run() {
  const std::string hf_dir = absl::GetFlag(FLAGS_hf_dir);
  const std::string ids_path = absl::GetFlag(FLAGS_input_ids);
  const std::string logits_path = absl::GetFlag(FLAGS_logits_out);
  const int64_t batch_chunk = absl::GetFlag(FLAGS_batch_chunk);
  if (hf_dir.empty()) return absl::InvalidArgumentError("--hf_dir is required");
  if (ids_path.empty()) return absl::InvalidArgumentError("--input_ids is required");
  if (batch_chunk < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--batch_chunk must be >= 0 (0: whole batch), got ", batch_chunk));
  }

  absl::StatusOr<std::unique_ptr<Model>> model = LoadHfModel(hf_dir);
  if (!model.ok()) return model.status();
  const ModelConfig& config = (*model)->config();
  absl::StatusOr<Tensor> ids = ReadIds(ids_path, config);
  if (!ids.ok()) return ids.status();
  const int64_t batch = ids->dim(0), seq = ids->dim(1);
  std::cerr << "moe-eval: " << hf_dir << " (" << (*model)->NumParameters() << " parameters) on "
            << batch << " x " << seq << " tokens\n";

  const Tensor labels = NextTokenLabels(*ids);
  Tensor logits;
  if (!logits_path.empty()) logits = Tensor::Empty({batch, seq, config.vocab_size}, DType::kF32);
  const int64_t chunk = batch_chunk == 0 ? batch : batch_chunk;
  double loss_sum = 0;
  int64_t tokens = 0;
  for (int64_t b0 = 0; b0 < batch; b0 += chunk) {
    const int64_t b1 = std::min(batch, b0 + chunk);
    const Tensor chunk_ids = ids->Slice(b0, b1).Clone();
    const Losses losses = (*model)->Evaluate(chunk_ids, labels.Slice(b0, b1).Clone());
    loss_sum += losses.lm_loss_sum;
    tokens += losses.tokens;
    if (logits.defined()) logits.Slice(b0, b1).CopyFrom((*model)->Logits(chunk_ids));
  }
  if (logits.defined()) {
    if (absl::Status s = WriteNpy(logits_path, logits); !s.ok()) return s;
  }
  // JSON has no NaN: with seq == 1 nothing is predicted and the loss is null.
  const double loss = tokens > 0 ? loss_sum / static_cast<double>(tokens)
                                 : std::numeric_limits<double>::quiet_NaN();
  std::cout << Json::MakeObject({{"loss", loss}, {"tokens", tokens}}).Dump() << std::endl;
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "the logits and next-token loss of a Hugging Face Mixtral checkpoint on token ids.\n"
      "  moe-eval --hf_dir=DIR --input_ids=IDS.npy [--logits_out=L.npy] [--batch_chunk=N]\n"
      "Prints {\"loss\": L, \"tokens\": N} on stdout.");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "moe-eval: unexpected argument \"%s\"; every input is a --flag\n",
                 rest[1]);
    return 1;
  }
  if (const absl::Status status = moe::Run(); !status.ok()) {
    std::fprintf(stderr, "moe-eval: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
