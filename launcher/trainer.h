// The single-process training loop of moe-train, separate from main() so that
// tests drive it directly.
//
// Step s (1-based) trains on the global samples [(s - 1) * G, s * G) of the
// training set (G = global_batch_size), split in order into micro-batches of
// M = micro_batch_size samples. A sample is seq_length + 1 tokens; its first
// seq_length are the inputs and its last seq_length the labels. Before the
// micro-batches run, the label tokens of the whole global batch are counted,
// and every micro-batch's losses are weighted so that the accumulated gradient
// is the gradient of
//
//   loss = (sum of token cross-entropies over the global batch) / (its label tokens)
//        + aux_coeff * mean over micro-batches of aux + z_coeff * mean of z,
//
// which does not depend on M (nor, later, on the data-parallel size) for the
// language-model term. The router losses are taken per micro-batch as in
// Megatron-LM, so they do depend on how the batch is split.
//
// Then: global gradient norm, clipping to clip_grad, and one AdamW step at the
// learning rate of Megatron's schedule. A non-finite norm skips the update
// (gradients zeroed, nothing else changed, the schedule does not advance);
// Train() stops with an error after max_nonfinite_steps in a row.
//
// Validation reads the first eval_iters * global_batch_size windows of the
// validation set in file order (not shuffled, whatever the seed), so that
// values taken at different steps, or in runs with other seeds, compare.
//
// Data parallelism (CP, PP, ETP = 1 for now). DP rank d reads the samples [(s - 1) * G + d * G /
// DP, ... + G / DP) of step s, in micro-batches of M, so that each micro-batch holds the same
// samples as on one rank. The label-token count and the logged losses are
// all-reduced over DP, the aux and z scales are 1 / (G / M) (all
// micro-batches of the global batch), and the gradients are summed over DP
// (parallel/grad_buckets.h) before the global norm, so every step computes
// the update of one rank up to rounding (DESIGN.md property 1). With
// use_distributed_optimizer, AdamW's state is sharded over DP
// (parallel/distributed_optimizer.h). Validation splits each global batch
// the same way and all-reduces the loss sums.
//
// Tensor parallelism (TP > 1, always with --sequence_parallel, as
// Megatron-Core requires for MoE models): the TP ranks of one DP rank read
// the same samples and compute the same losses (model/model.h), so every
// sum above stays over DP only. The parameters every TP rank holds whole
// (norms, routers) get their gradient from the rank's own sequence shard:
// they are summed over TP before the DP reduction (Megatron's
// finalize_model_grads). The global norm counts each TP rank's squares of a
// parameter divided by the number of TP ranks holding it (TpCopies).
//
// Experts: the expert grid folds EP over TP x DP, EDP = TP * DP / EP. With
// EP > 1 or TP > 1 the routed experts' gradients form their own group,
// reduced over EDP (the other parameters over DP).
#ifndef MOE_LAUNCHER_TRAINER_H_
#define MOE_LAUNCHER_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/gpt_dataset.h"
#include "core/optim/adamw.h"
#include "core/optim/lr_schedule.h"
#include "launcher/step_log.h"
#include "model/config.h"
#include "model/model.h"
#include "parallel/communicator.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/grad_buckets.h"
#include "parallel/rank_grid.h"
#include "parallel/simulated_network.h"

namespace moe {

// Everything a run needs, already resolved (no "0 means default" left).
// Field names follow the Megatron-LM flags, which is what error messages name.
struct TrainerOptions {
  ModelConfig model;
  int64_t seq_length = 0;
  int64_t micro_batch_size = 1;
  int64_t global_batch_size = 1;
  int64_t train_iters = 0;
  LrSchedule::Options lr;       // max_lr = --lr, decay_iters = --lr_decay_iters, ...
  AdamW::Options adam;          // --adam_beta1/2, --adam_eps, --weight_decay
  double clip_grad = 1.0;       // 0: measure the norm but never clip (Megatron's rule)
  uint64_t seed = 1234;         // weights and data order
  std::string data_path;        // prefix of the training .bin/.idx
  std::string valid_data_path;  // prefix of the validation set; empty: no validation
  int64_t eval_interval = 1000;
  int64_t eval_iters = 100;
  int64_t log_interval = 100;
  int max_nonfinite_steps = 3;  // consecutive skipped steps before Train() gives up
  // Megatron-LM's --tensor_model_parallel_size, ... (CheckParallelImplemented
  // says which run); DP is derived.
  ParallelSizes parallel;
  bool sequence_parallel = false;
  bool use_distributed_optimizer = false;
  DispatcherType moe_token_dispatcher_type = DispatcherType::kAllToAll;
  int64_t ddp_bucket_size = 0;  // elements per gradient bucket; 0 = max(4e7, 1e6 * DP) (Megatron)
  // --sim_latency_us and --sim_bandwidth_gbps (converted from Gbit/s to the
  // struct's GB/s). When either is > 0, Create wraps the world communicator,
  // and so every group split from it, in a SimulatedNetwork: timing changes,
  // results do not.
  SimulatedNetworkOptions sim_network;
  // Checkpoints (launcher/checkpoint.h). With `save` set, Train() saves to
  // it every save_interval steps (0: never periodically), after the last
  // step, and when it stops early (exit_interval or a stop request),
  // keeping the newest save_keep iterations (0: all).
  std::string save;
  int64_t save_interval = 0;
  int save_keep = 2;
  int64_t exit_interval = 0;  // stop after a step divisible by this (Megatron's); 0: never
};

// Whether `options` asks for a simulated network, and its model in words.
bool SimulatedNetworkOn(const SimulatedNetworkOptions& options);
std::string DescribeSimulatedNetwork(const SimulatedNetworkOptions& options);

// The rank grid of a run on `world_size` ranks, validated against the model
// and the batch (RankGrid::Create; its message names the flags).
absl::StatusOr<RankGrid> BuildRankGrid(const TrainerOptions& options, int world_size);
// Fails, naming the flag, for a layout the trainer cannot run: a size other
// than 1 for CP, PP or ETP (not built yet); TP > 1 without
// --sequence_parallel, or --sequence_parallel with TP = 1; under TP a
// --vocab_size or --seq_length that TP does not divide.
absl::Status CheckParallelImplemented(const TrainerOptions& options);

// Megatron-LM's default gradient bucket: max(40M, 1M * DP) elements.
int64_t ResolvedBucketElements(const TrainerOptions& options, int dp_size);

// The start-up memory report of one rank: parameters (its TP slices and EP
// experts), gradients (and their bucket copy), optimizer state with and
// without the distributed optimizer, and an estimate of the activations
// saved per micro-batch. Formula in trainer_report.cc (MemoryReport).
std::string MemoryReport(const TrainerOptions& options, int64_t num_parameters, int dp_size);

class Trainer {
 public:
  // Opens and checks the data sets (the errors name --data_path,
  // --valid_data_path, --vocab_size, --eval_iters), then builds the model and
  // initialises it from options.seed. `options` must have passed
  // ValidateTrainerOptions (launcher/train_flags.h); nothing is allocated for
  // the model before the data checks pass.
  //
  // `world` (may be null: one rank, a LocalCommunicator) holds every rank of
  // the run and must outlive the trainer; the rank grid is built on it and
  // validated (options.parallel, the batch against DP). Every rank then
  // checks that its initial weights equal rank 0's (a checksum all-reduce).
  // With options.sim_network on, `world` is wrapped (not owned) first.
  // Create is collective: every rank of `world` calls it.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TrainerOptions& options,
                                                         Communicator* world = nullptr);

  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // The start-of-run report: configuration, parameter counts (total and
  // active per token) and the number of samples. Several lines.
  std::string Summary() const;

  // Trains on the next global batch. Fails (before any compute) when the
  // batch holds a token id outside --vocab_size.
  absl::StatusOr<StepStats> Step();
  // Mean language-model loss per token over the first eval_iters global
  // batches of the validation set. Requires has_validation().
  absl::StatusOr<double> Evaluate();

  // Steps until step() reaches train_iters (Megatron's total, so a resumed
  // run continues to the same end): each step goes to `log` (may be null),
  // every log_interval-th step and every validation to `out` (may be null).
  // Validation runs every eval_interval steps and after the last step.
  // Checkpoints as TrainerOptions::save says. After every step the ranks
  // agree (one all-reduce) whether any saw the stop flag; if so, or at an
  // exit_interval step, they save (with --save) and return OK early.
  absl::Status Train(StepLog* log, std::ostream* out);

  // A flag that a signal handler may set (moe-train's SIGTERM/SIGINT); must
  // outlive Train(). Null: never stop early.
  void SetStopFlag(const std::atomic<bool>* stop) { stop_ = stop; }
  bool stopped_early() const { return stopped_early_; }
  // Called on every rank after each checkpoint save with its wall time.
  void SetCheckpointCallback(std::function<void(double seconds)> callback) {
    on_checkpoint_ = std::move(callback);
  }

  // For checkpoints (launcher/checkpoint.cc). Exactly one of optimizer()
  // (replicated AdamW) and distributed_optimizer() is non-null.
  Communicator* world() const { return world_; }
  Communicator* dp() const { return dp_.get(); }
  Communicator* tp() const { return tp_.get(); }  // null when TP = 1
  AdamW* optimizer() { return optimizer_.get(); }
  DistributedOptimizer* distributed_optimizer() { return dist_optimizer_.get(); }
  // With EP > 1 or TP > 1 and the distributed optimizer: the experts'
  // (sharded over EDP); null otherwise.
  DistributedOptimizer* expert_distributed_optimizer() { return expert_dist_optimizer_.get(); }
  Communicator* ep() const { return ep_.get(); }
  Communicator* edp() const { return edp_.get(); }
  // Completed updates: the LR schedule's position (skipped steps excluded).
  int64_t optimizer_step() const {
    return dist_optimizer_ != nullptr ? dist_optimizer_->step() : optimizer_->step();
  }
  // Sets the step counters of a loaded checkpoint (the optimizer's step is
  // restored with its state).
  void RestoreProgress(int64_t step, int consecutive_nonfinite) {
    step_ = step;
    consecutive_nonfinite_ = consecutive_nonfinite;
  }

  const TrainerOptions& options() const { return options_; }
  const RankGrid& grid() const { return grid_; }
  int dp_rank() const { return dp_->rank(); }
  int dp_size() const { return dp_->size(); }
  Model& model() { return model_; }
  bool has_validation() const { return valid_.has_value(); }
  int64_t step() const { return step_; }  // steps done (skipped ones included)
  int64_t num_train_samples() const { return train_.num_samples(); }
  int consecutive_nonfinite() const { return consecutive_nonfinite_; }

 private:
  Trainer(const TrainerOptions& options, GptDataset train, std::optional<GptDataset> valid,
          RankGrid grid, std::unique_ptr<Communicator> owned_world, Communicator* world);

  // Sum of `values` over DP, in place (the DP group's all-reduce).
  void SumOverDp(std::vector<double>* values) const;
  // Fails unless every rank holds rank 0's initial weights.
  absl::Status CheckReplicasAgree();
  // The gradient reduction over DP, global norm and clipping, and the update.
  double ReduceAndClip();
  void ApplyUpdate(double lr);
  void ZeroGrads();

  // Reads samples [first, first + count) into sample_buffer_ (count rows of
  // seq_length + 1 tokens) and checks their ids against --vocab_size.
  // Training samples follow the data set's shuffled order (GptDataset::
  // GetSample); validation reads windows in file order, whatever the seed.
  absl::Status LoadSamples(bool validation, int64_t first, int64_t count);
  // Inputs and labels [M, seq] of micro-batch `m` of sample_buffer_.
  void MicroBatch(int64_t m, Tensor* ids, Tensor* labels) const;

  TrainerOptions options_;
  GptDataset train_;
  std::optional<GptDataset> valid_;
  RankGrid grid_;
  // When Create was given none, or the SimulatedNetwork wrapping `world`.
  std::unique_ptr<Communicator> owned_world_;
  Communicator* world_;
  std::unique_ptr<Communicator> tp_;  // tensor parallel (null when TP = 1)
  std::unique_ptr<Communicator> dp_;  // the data-parallel group
  std::unique_ptr<Communicator> ep_;  // expert parallel (null when EP = 1)
  // Expert data parallel: null unless EP > 1 or TP > 1, when the experts'
  // gradients are reduced over it instead of over DP.
  std::unique_ptr<Communicator> etp_;  // expert tensor parallel (null when ETP = 1)
  std::unique_ptr<Communicator> edp_;
  Model model_;
  // Replicated AdamW over every local parameter, with buckets_ reducing
  // grads over DP when DP > 1; or the distributed optimizer over DP. With
  // edp_ the experts' grads are reduced over EDP instead, by
  // expert_buckets_ or expert_dist_optimizer_, and buckets_ /
  // dist_optimizer_ hold the non-expert parameters only.
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<GradBuckets> buckets_;
  std::unique_ptr<GradBuckets> expert_buckets_;
  std::unique_ptr<DistributedOptimizer> dist_optimizer_;
  std::unique_ptr<DistributedOptimizer> expert_dist_optimizer_;
  // Every parameter whose gradient a bucket reduces over 2+ ranks, and that
  // bucket set: the model's backward hook marks them ready (overlap).
  std::unordered_map<const Parameter*, GradBuckets*> bucket_of_;
  LrSchedule schedule_;
  int64_t step_ = 0;
  int consecutive_nonfinite_ = 0;
  std::vector<int32_t> sample_buffer_;
  const std::atomic<bool>* stop_ = nullptr;
  bool stopped_early_ = false;
  std::function<void(double)> on_checkpoint_;
};

}  // namespace moe

#endif  // MOE_LAUNCHER_TRAINER_H_
