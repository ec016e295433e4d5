// The command-line flags of moe-train (Abseil flags, Megatron-LM names with
// underscores; --flagfile=examples/recipes/<recipe>.flags reads a recipe)
// and their conversion into validated TrainerOptions.
//
// Every check runs before anything is allocated. An error is one line that
// names the flag as the user typed it (--num_query_groups, never the Hugging
// Face field num_key_value_heads), says what is wrong and how to fix it.
#ifndef MOE_LAUNCHER_TRAIN_FLAGS_H_
#define MOE_LAUNCHER_TRAIN_FLAGS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "launcher/trainer.h"

namespace moe {

// What main() needs beyond the trainer's options.
struct TrainSettings {
  TrainerOptions trainer;
  int threads = 0;          // --threads: OpenMP threads; 0 = every core
  std::string log_jsonl;    // --log_jsonl: the step log; empty = none (written by rank 0)
  bool print_grid = false;  // --print_grid: print the rank grid and exit

  // --load: the checkpoint to resume (launcher/checkpoint.h); empty = none.
  std::string load;
  // --init_from_hf: the Hugging Face weights to start from; empty = none.
  std::string init_from_hf;

  int metrics_port = 0;         // --metrics_port: rank r serves on it + r; 0 = no metrics
  double metrics_linger_s = 0;  // --metrics_linger_s: keep serving after the last step
  double mfu_peak_tflops = 0;   // --mfu_peak_tflops: per-rank peak for MFU; 0 = no MFU
};

// Reads the flags (after absl::ParseCommandLine), resolves the defaults that
// depend on other flags (--num_query_groups = --num_attention_heads,
// --ffn_hidden_size = 4 * --hidden_size, --max_position_embeddings =
// --seq_length, --global_batch_size = --micro_batch_size, --lr_decay_iters =
// --train_iters) and validates the result with ValidateTrainerOptions.
absl::StatusOr<TrainSettings> TrainSettingsFromFlags();

// Every rule a run needs, except those about the data files (Trainer::Create
// checks those). ModelConfig, LrSchedule and AdamW validate their own fields;
// their messages are rewritten to name the flags and to suggest a fix.
absl::Status ValidateTrainerOptions(const TrainerOptions& options);

// Shows the flags of launcher/ under --help (Abseil shows only the main
// file's by default). Call before absl::ParseCommandLine.
void SetTrainUsage();

}  // namespace moe

#endif  // MOE_LAUNCHER_TRAIN_FLAGS_H_
