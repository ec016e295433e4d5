// Learning-rate schedule of Megatron-LM's OptimizerParamScheduler
// (megatron/core/optimizer_param_scheduler.py, get_lr), matched rule for rule:
//
//   warmup:  if warmup_iters > 0 and n <= warmup_iters (inclusive):
//              lr = warmup_init_lr + (max_lr - warmup_init_lr) * n / warmup_iters
//   constant style:     lr = max_lr after warmup
//   past the end:       n > decay_iters  ->  lr = min_lr
//   otherwise, with ratio = (n - warmup_iters) / (decay_iters - warmup_iters):
//     linear:              min_lr + (1 - ratio) * (max_lr - min_lr)
//     cosine:              min_lr + 0.5 * (cos(pi * ratio) + 1) * (max_lr - min_lr)
//     inverse-square-root: max(min_lr, max_lr * sqrt(max(warmup_iters, 1)) / sqrt(max(n, 1)))
//
// `n` counts completed optimizer steps, as Megatron's num_steps does: its
// scheduler is stepped after each optimizer step, so the k-th optimizer step
// (k = 1, 2, ...) runs with At(k - 1), and with warmup the first step runs at
// warmup_init_lr (0 by default). Megatron counts in samples when training by
// samples; here the unit is iterations (Megatron's --lr_warmup_iters,
// --lr_decay_iters).
#ifndef MOE_CORE_OPTIM_LR_SCHEDULE_H_
#define MOE_CORE_OPTIM_LR_SCHEDULE_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

enum class LrDecayStyle { kConstant, kLinear, kCosine, kInverseSquareRoot };

// Megatron's --lr_decay_style names: "constant", "linear", "cosine",
// "inverse-square-root".
absl::StatusOr<LrDecayStyle> ParseLrDecayStyle(std::string_view name);
std::string_view LrDecayStyleName(LrDecayStyle style);

class LrSchedule {
 public:
  struct Options {
    double max_lr = 0;          // Megatron --lr
    double min_lr = 0;          // --min_lr
    double warmup_init_lr = 0;  // --lr_warmup_init
    int64_t warmup_iters = 0;   // --lr_warmup_iters
    int64_t decay_iters = 0;    // --lr_decay_iters (Megatron defaults it to --train_iters)
    LrDecayStyle decay_style = LrDecayStyle::kCosine;
  };

  // Megatron's constructor asserts, as errors naming the field: all values
  // finite; 0 <= min_lr <= max_lr; 0 <= warmup_init_lr <= max_lr;
  // warmup_iters >= 0; decay_iters > 0; warmup_iters < decay_iters (strictly,
  // as Megatron requires, for every style).
  static absl::Status Validate(const Options& options);

  // Dies on invalid options; call Validate first for a recoverable error.
  explicit LrSchedule(const Options& options);

  // The learning rate after `iteration` (>= 0) completed optimizer steps.
  double At(int64_t iteration) const;

  const Options& options() const { return options_; }

 private:
  Options options_;
};

}  // namespace moe

#endif  // MOE_CORE_OPTIM_LR_SCHEDULE_H_
