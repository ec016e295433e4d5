// The on-disk format of moe-train checkpoints, independent of the trainer.
//
//   DIR/latest                        "iter_0000010\n": the checkpoint to load,
//                                     written last, atomically
//   DIR/iter_0000010/metadata.json    step, data and schedule position, seed,
//                                     model config, the layout it was saved
//                                     under, the list of shard files
//   DIR/iter_0000010/rank_00000.safetensors   one file per rank
//
// Every tensor in a shard file is a slice of a logical tensor: a parameter
// under its Hugging Face name, or the optimizer state of one
// ("optimizer.exp_avg.<name>", "optimizer.exp_avg_sq.<name>",
// "optimizer.master.<name>"). The file's __metadata__ entry "moe_checkpoint"
// is a JSON object giving, for every stored tensor, the logical tensor's
// global shape, the part it holds, and a CRC-32 of its bytes:
//
//   {"format_version": 1, "iteration": 10, "rank": 0, "tensors": {
//     "model.norm.weight": {"global_shape": [32], "offsets": [0], "crc32": 123},
//     "optimizer.exp_avg.lm_head.weight": {"global_shape": [64, 32],
//         "offsets": [0, 0], "box_shape": [64, 32], "flat_offset": 512, "crc32": 456}}}
//
// A box ("offsets": its corner; its extent is the stored shape) is what a
// rank holds of a parameter: the whole tensor, or a tensor-parallel slice
// (Parameter::slice). A flat run ("box_shape", "flat_offset") is a 1-D range
// of such a box in row-major order, as the distributed optimizer shards its
// state. A reader assembles any region
// of a logical tensor from whichever pieces overlap it, so a checkpoint saved
// under one layout loads under any other; the pieces of a tensor must not
// overlap, and a region they do not cover is an error.
//
// The save protocol (one process, rank 0, around every rank's
// WriteShardFile) keeps the previous checkpoint loadable whatever happens:
// shard files go to DIR/iter_X.tmp (each written to a temporary name,
// fsynced and renamed by AtomicFileWriter), then metadata.json, then the
// directory is renamed to DIR/iter_X and fsynced, then DIR/latest is
// replaced atomically, and only then are iterations beyond `keep` deleted.
#ifndef MOE_LAUNCHER_CHECKPOINT_FORMAT_H_
#define MOE_LAUNCHER_CHECKPOINT_FORMAT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/safetensors.h"
#include "core/json.h"
#include "core/tensor.h"

namespace moe {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr char kCheckpointFormatName[] = "moe-train checkpoint";
inline constexpr char kCheckpointLatestFile[] = "latest";
inline constexpr char kCheckpointMetadataFile[] = "metadata.json";

// Where a stored tensor sits in its logical tensor: a box, or a flat run of
// a box (a range of its elements in row-major order).
struct TensorSlice {
  Shape global_shape;
  std::vector<int64_t> offsets;  // the box's corner in the global tensor
  // flat_offset < 0: the stored tensor is the box [offsets, offsets + its shape).
  // flat_offset >= 0: the stored tensor is 1-D, the elements [flat_offset,
  // flat_offset + its numel) of the box [offsets, offsets + box_shape).
  Shape box_shape;
  int64_t flat_offset = -1;

  static TensorSlice Whole(const Shape& shape);
  static TensorSlice Box(const Shape& global_shape, const std::vector<int64_t>& offsets);
  // Elements [offset, ...) of the box `box` whose extent is `box_shape`.
  static TensorSlice FlatRun(const TensorSlice& box, const Shape& box_shape, int64_t offset);
  bool is_flat() const { return flat_offset >= 0; }
};

// One tensor of a shard file.
struct ShardTensor {
  std::string name;  // the logical tensor's name
  TensorSlice slice;
  Tensor data;  // CPU; the slice's elements (a box's shape, or 1-D for a flat run)
};

// "iter_0000010" (Megatron-LM's seven digits).
std::string IterationDirName(int64_t iteration);
// The iteration of an "iter_<digits>" name, or nullopt for any other name.
std::optional<int64_t> ParseIterationDirName(std::string_view name);
// "rank_00003.safetensors".
std::string ShardFileName(int rank);

// The logical name of one kind of optimizer state of a parameter.
std::string OptimizerStateName(std::string_view kind, std::string_view param_name);

// Writes `tensors` as one safetensors file at `path` (atomically), with the
// slice records and checksums of the header comment.
absl::Status WriteShardFile(const std::string& path, const std::vector<ShardTensor>& tensors,
                            int64_t iteration, int rank);

// The save protocol of the header comment, for rank 0. Begin creates `dir`
// if needed, removes what interrupted saves left behind (iter_*.tmp,
// iter_*.old and iter_*.deleting directories) and returns a fresh empty
// DIR/iter_X.tmp for the shard files.
absl::StatusOr<std::string> BeginCheckpointSave(const std::string& dir, int64_t iteration);
// Writes metadata.json into `temp_dir`, moves it to DIR/iter_X (replacing
// an older save of the same iteration only once the new one is complete),
// points DIR/latest at it, then deletes the oldest iterations below X so that
// `keep` remain (X included; keep = 0 keeps all). Iterations above X, left
// by a run that went further before this one resumed from an earlier step,
// are never deleted.
absl::Status CommitCheckpointSave(const std::string& dir, int64_t iteration,
                                  const std::string& temp_dir, const Json& metadata, int keep);
// Best effort: removes an uncommitted DIR/iter_X.tmp after a failure.
void AbandonCheckpointSave(const std::string& temp_dir);

// A test hook for crash-safety tests: when the environment variable
// MOE_CHECKPOINT_CRASH_AT equals `point`, the process kills itself with
// SIGKILL (exactly what kill -9 does). Points: "shards_written" (before
// metadata.json), "renamed" (before latest), "latest_written" (before old
// iterations are deleted).
void MaybeCrashForTest(std::string_view point);

// Reads a checkpoint. Open checks everything but the tensor bytes: latest,
// metadata.json, every shard file's header and slice records, that the
// pieces of each tensor agree on its global shape and do not overlap. Read
// checks each piece's CRC as it reads it. Every error names the file and
// says what to do.
class CheckpointReader {
 public:
  // `path`: a --save directory (its `latest` names the iteration) or one
  // iteration directory (it holds metadata.json).
  static absl::StatusOr<CheckpointReader> Open(const std::string& path);

  const std::string& dir() const { return dir_; }  // the iteration directory
  const Json& metadata() const { return metadata_; }
  int64_t iteration() const { return iteration_; }
  // Logical tensor names, sorted.
  std::vector<std::string> Names() const;
  bool Contains(std::string_view name) const { return tensors_.contains(std::string(name)); }
  // The global shape of `name`; nullptr if the checkpoint does not hold it.
  const Shape* GlobalShape(std::string_view name) const;
  // Total bytes of the shard files' tensors.
  int64_t total_bytes() const { return total_bytes_; }

  // Fills `out` (CPU; F32, F64 or BF16; converted from the stored dtype) with
  // the region `slice` of tensor `name`: a box of out's shape, or a flat run
  // of out's numel. slice.global_shape must be the stored global shape.
  absl::Status Read(std::string_view name, const TensorSlice& slice, Tensor* out) const;
  // Reads every piece and checks its CRC.
  absl::Status VerifyAll() const;

 private:
  struct Piece {
    size_t file = 0;   // index into files_
    size_t entry = 0;  // index into that file's entries()
    TensorSlice slice;
    uint32_t crc32 = 0;
  };
  struct Logical {
    Shape global_shape;
    std::vector<Piece> pieces;
  };

  absl::Status OpenShards(const std::vector<std::string>& files);
  absl::Status AddPiece(size_t file, size_t entry_index, const Json& record);
  absl::Status CheckNoOverlap(const std::string& name, const Logical& logical) const;
  // The stored bytes of a piece, CRC-checked.
  absl::StatusOr<Tensor> ReadPiece(const Piece& piece) const;
  // What to do about a damaged checkpoint: another iteration to load.
  std::string DamagedHint() const;

  std::string save_dir_;  // the parent --save directory
  std::string dir_;
  Json metadata_;
  int64_t iteration_ = 0;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Logical> tensors_;
  int64_t total_bytes_ = 0;
};

}  // namespace moe

#endif  // MOE_LAUNCHER_CHECKPOINT_FORMAT_H_
