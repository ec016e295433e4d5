// Checkpoints of a training run (--save, --load) and of a bare model
// (moe-convert), in the format of launcher/checkpoint_format.h.
//
// What a trainer checkpoint holds:
//   parameters        every parameter once, under its Hugging Face name, as
//                     the box its holder has (Parameter::slice): of each set
//                     of replicas (DP and CP ranks; EDP for experts; TP or ETP
//                     ranks when the layer does not slice the parameter) the
//                     rank with coordinate 0 writes it
//   optimizer state   AdamW's exp_avg and exp_avg_sq per parameter (and the
//                     fp32 master of a bf16 parameter): whole, next to the
//                     parameter, with the replicated optimizer; as flat runs
//                     of each DP rank's chunk with --use_distributed_optimizer
//                     (its fp32 masters are the fp32 parameters bit for bit,
//                     so they are not stored twice), and the optimizer step
//   metadata.json     the step, consumed samples (step * global batch), the
//                     optimizer step (the LR schedule's position: skipped
//                     steps do not advance it), the count of consecutive
//                     non-finite steps, the seed, the model config, the
//                     layout it was saved under
//
// Nothing else is needed to resume exactly: the data order is a function of
// (seed, global sample index), the weights' initialisation of (seed, name,
// element index) (both Philox), and no layer draws random numbers while
// training. Loading reassembles each rank's boxes and chunks from whatever
// pieces overlap them, so any valid layout loads a checkpoint saved under any
// other.
//
// Save and load are collective over the trainer's world: every rank calls
// them, and every rank returns an error if any rank failed.
#ifndef MOE_LAUNCHER_CHECKPOINT_H_
#define MOE_LAUNCHER_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "launcher/trainer.h"
#include "model/model.h"

namespace moe {

struct CheckpointSaveInfo {
  std::string path;  // the iteration directory
  int64_t step = 0;
  int64_t bytes = 0;  // tensor bytes written by all ranks
  double seconds = 0;
};
// "checkpoint | step 10 | DIR/iter_0000010 | 1.2 MB in 0.04 s (0.03 GB/s)"
std::string FormatSaveLine(const CheckpointSaveInfo& info);

// Saves `trainer` at its current step to DIR/iter_<step>, then points
// DIR/latest at it and keeps the newest `keep` iterations (0: all). A failure
// (or a crash) at any point leaves DIR/latest naming the previous checkpoint.
absl::StatusOr<CheckpointSaveInfo> SaveCheckpoint(Trainer& trainer, const std::string& dir,
                                                  int keep);

// What --load will resume from.
struct CheckpointSummary {
  std::string dir;  // the iteration directory
  int64_t iteration = 0;
  bool has_optimizer_state = false;
  std::string saved_under;  // "2 ranks: DP 2, distributed optimizer", ...
};
// Checks the checkpoint `load` names against a run's options, before the
// trainer allocates anything: the model config (each difference named by its
// flag), --seed, --global_batch_size and --seq_length (all of which the data
// position depends on), and that --train_iters is not behind it.
absl::StatusOr<CheckpointSummary> CheckCheckpointForRun(const std::string& load,
                                                        const TrainerOptions& options);
// Loads weights, optimizer state and step counters into `trainer` (built
// from the same options). Every needed tensor is checked to be present with
// its shape before any is read.
absl::Status LoadCheckpoint(const std::string& load, Trainer* trainer);

// --init_from_hf: checks config.json in `hf_dir` against the run's model
// flags (before Create), then loads the weights into a trainer at step 0.
absl::Status CheckHfModelForRun(const std::string& hf_dir, const TrainerOptions& options);
absl::Status InitFromHf(const std::string& hf_dir, Trainer* trainer);

// moe-convert --from_hf: a checkpoint of `model` alone (step 0, no optimizer
// state) in a directory that holds no checkpoint yet; --load of it trains
// from these weights.
absl::StatusOr<CheckpointSaveInfo> SaveModelCheckpoint(const std::string& dir, Model& model,
                                                       const std::string& saved_by);
// moe-convert --to_hf: a CPU fp32 model with the checkpoint's config and
// weights (any layout it was saved under).
absl::StatusOr<std::unique_ptr<Model>> LoadModelFromCheckpoint(const std::string& load);

}  // namespace moe

#endif  // MOE_LAUNCHER_CHECKPOINT_H_
