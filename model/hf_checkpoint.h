// Hugging Face Mixtral checkpoints: a directory with config.json and the
// weights as model.safetensors, or as shards model-0000i-of-0000n.safetensors
// listed by model.safetensors.index.json ({"metadata": {"total_size": N},
// "weight_map": {tensor name: shard file}}). Tensor names are the on-disk
// names that transformers 4 and 5 both read and write (see Model::Parameters).
//
// When both a single file and an index are present, the single file wins, as
// in transformers' from_pretrained.
#ifndef MOE_MODEL_HF_CHECKPOINT_H_
#define MOE_MODEL_HF_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"

namespace moe {

// Loads every parameter of `model` (any dtype and device) from the weights in
// `dir`. Stored F32, BF16 and F64 tensors are converted to the parameter's
// dtype. Nothing is read until the whole checkpoint has been checked, and each
// error names the file or tensor and what to do: no weights in `dir`, a
// parameter missing from the files, a shape mismatch (expected vs found), an
// unsupported dtype, an index naming a missing shard, or a stored tensor that
// the model does not have (rotary inv_freq buffers excepted: older
// transformers versions saved them).
absl::Status LoadHfWeights(const std::string& dir, Model* model);

// config.json (ModelConfig::FromHfFile, validated) and the weights: a new CPU
// fp32 model.
absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir);

// Writes config.json and the weights of `model` (in the parameters' dtype)
// into `dir`, creating it if needed: one model.safetensors when everything
// fits in `max_shard_bytes`, otherwise shards of at most that size (a larger
// single tensor gets a shard to itself) and the index. Files carry the
// metadata {"format": "pt"}.
//
// Every file is written atomically, and a directory that holds config.json is
// complete: an existing config.json is removed first and written again last,
// after the weights and the index, so a failed or interrupted save never
// leaves a directory that looks loadable but mixes old and new files. Weight
// files of the other layout (a previous single file or shards) are removed.
absl::Status SaveHfModel(const std::string& dir, Model& model,
                         int64_t max_shard_bytes = 5'000'000'000);

}  // namespace moe

#endif  // MOE_MODEL_HF_CHECKPOINT_H_
