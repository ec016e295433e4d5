// What moe-train reports about each training step: one JSON object per line
// in the --log_jsonl file (machine-readable, for plots and tests) and a
// one-line summary on stdout every --log_interval steps (for people).
//
// The JSONL file is opened for appending and every record is flushed as soon
// as it is written, so a crash or a kill never loses a logged step, and a
// restarted run continues the same file.
#ifndef MOE_LAUNCHER_STEP_LOG_H_
#define MOE_LAUNCHER_STEP_LOG_H_

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/json.h"

namespace moe {

// The numbers of one optimizer step (a skipped step included).
struct StepStats {
  int64_t step = 0;  // 1-based
  // The objective as the gradient sees it: lm_loss + aux_coeff * aux_loss + z_coeff * z_loss.
  double loss = 0;
  double lm_loss = 0;    // mean cross-entropy per label token over the global batch
  double aux_loss = 0;   // load-balancing loss (not times its coefficient), mean over micro-batches
  double z_loss = 0;     // router z-loss (not times its coefficient), mean over micro-batches
  double lr = 0;         // the learning rate of this step (of the update it would have made)
  double grad_norm = 0;  // global gradient norm before clipping; NaN/inf when skipped
  bool skipped = false;  // the norm was not finite: no update was made
  int64_t tokens = 0;    // label tokens in the global batch
  double step_s = 0;     // wall time of the whole step (data, compute, update)
  double tokens_per_s = 0;
  std::optional<double> val_loss;  // at evaluation steps
  double entropy_loss = 0;  // top-p router entropy loss (not times its coefficient); 0 when off
  // Per MoE layer, per expert, over the global batch and every rank: the
  // (token, choice) pairs each expert received (after dropping) and the
  // pairs dropped at capacity; per layer the mean router score entropy and
  // the balance max/mean of the received counts (1 = perfectly balanced).
  std::vector<std::vector<double>> expert_tokens;
  std::vector<std::vector<double>> expert_dropped;
  std::vector<double> router_entropy;
  std::vector<double> load_balance;
  // This rank's communication during the step (Communicator::Times): time
  // spent waiting for collectives, and time they ran behind compute.
  double comm_exposed_s = 0;
  double comm_hidden_s = 0;
};

// The JSONL record: step, loss, lm_loss, aux_loss, z_loss, lr, grad_norm,
// tokens_per_s, step_s, then val_loss at evaluation steps and "skipped": true
// for a skipped step, then (when the step has them) entropy_loss and the
// expert metrics expert_tokens / expert_dropped ([layer][expert]),
// router_entropy and load_balance ([layer]), then comm_exposed_s and
// comm_hidden_s on multi-rank runs. Non-finite numbers (a diverged step) are
// null.
Json StepRecord(const StepStats& stats);

// `step 10/300 | loss 4.1234 | lm 4.1200 | aux 2.0012 | lr 3.0e-04 | grad 1.234 | 12.3k tok/s
// | 0.210 s` (one line; the z-loss appears when `show_z`, "skipped" when skipped).
std::string FormatStepLine(const StepStats& stats, int64_t train_iters, bool show_z);
// `validation | step 50 | val loss 3.2100 | val ppl 24.78`
std::string FormatValidationLine(int64_t step, double val_loss);

// Appends StepRecords to a file, one line each, flushed per line, and hands
// each step to its observers (the Prometheus metrics), so that the trainer
// has one per-step sink.
class StepLog {
 public:
  // Creates (with its directory) or appends to `path`; the error names the
  // path and --log_jsonl.
  static absl::StatusOr<StepLog> Open(const std::string& path);
  // A log without a file: it only feeds its observers (path() is empty).
  StepLog() = default;
  StepLog(StepLog&& other) noexcept;
  StepLog& operator=(StepLog&& other) noexcept;
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;
  ~StepLog();

  // Writes the record (if there is a file), then calls every observer.
  absl::Status Write(const StepStats& stats);
  const std::string& path() const { return path_; }
  // Called with every step after it is written; must be cheap (it runs on
  // the training thread).
  void AddObserver(std::function<void(const StepStats&)> observer) {
    observers_.push_back(std::move(observer));
  }

 private:
  StepLog(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}
  std::string path_;
  std::FILE* file_ = nullptr;
  std::vector<std::function<void(const StepStats&)>> observers_;
};

}  // namespace moe

#endif  // MOE_LAUNCHER_STEP_LOG_H_
