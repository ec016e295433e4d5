#include "core/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace moe {
namespace {

absl::Status Invalid(const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat("lr schedule: ", message));
}

}  // namespace

absl::StatusOr<LrDecayStyle> ParseLrDecayStyle(std::string_view name) {
  for (LrDecayStyle style : {LrDecayStyle::kConstant, LrDecayStyle::kLinear, LrDecayStyle::kCosine,
                             LrDecayStyle::kInverseSquareRoot}) {
    if (name == LrDecayStyleName(style)) return style;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("lr_decay_style must be constant, linear, cosine or inverse-square-root, got \"",
                   std::string(name), "\""));
}

std::string_view LrDecayStyleName(LrDecayStyle style) {
  switch (style) {
    case LrDecayStyle::kConstant:
      return "constant";
    case LrDecayStyle::kLinear:
      return "linear";
    case LrDecayStyle::kCosine:
      return "cosine";
    case LrDecayStyle::kInverseSquareRoot:
      return "inverse-square-root";
  }
  return "unknown";
}

absl::Status LrSchedule::Validate(const Options& o) {
  for (auto [field, value] : {std::pair{"max_lr", o.max_lr}, std::pair{"min_lr", o.min_lr},
                              std::pair{"warmup_init_lr", o.warmup_init_lr}}) {
    if (!std::isfinite(value)) return Invalid(absl::StrCat(field, " must be finite, got ", value));
  }
  if (o.min_lr < 0) return Invalid(absl::StrCat("min_lr must be >= 0, got ", o.min_lr));
  if (o.max_lr < o.min_lr) {
    return Invalid(absl::StrCat("max_lr (", o.max_lr, ") must be >= min_lr (", o.min_lr, ")"));
  }
  if (o.warmup_init_lr < 0 || o.warmup_init_lr > o.max_lr) {
    return Invalid(absl::StrCat("warmup_init_lr (", o.warmup_init_lr,
                                ") must be in [0, max_lr = ", o.max_lr, "]"));
  }
  if (o.warmup_iters < 0) {
    return Invalid(absl::StrCat("warmup_iters must be >= 0, got ", o.warmup_iters));
  }
  if (o.decay_iters <= 0) {
    return Invalid(absl::StrCat("decay_iters must be > 0, got ", o.decay_iters));
  }
  if (o.warmup_iters >= o.decay_iters) {
    return Invalid(absl::StrCat("warmup_iters (", o.warmup_iters, ") must be < decay_iters (",
                                o.decay_iters, ")"));
  }
  return absl::OkStatus();
}

LrSchedule::LrSchedule(const Options& options) : options_(options) {
  const absl::Status status = Validate(options_);
  MOE_CHECK(status.ok()) << status.message();
}

double LrSchedule::At(int64_t iteration) const {
  MOE_CHECK(iteration >= 0) << "LrSchedule::At: iteration must be >= 0, got " << iteration;
  const Options& o = options_;
  // Each expression is written in Megatron's evaluation order, so the values
  // agree with it to the last bit.
  if (o.warmup_iters > 0 && iteration <= o.warmup_iters) {
    return o.warmup_init_lr + (o.max_lr - o.warmup_init_lr) * static_cast<double>(iteration) /
                                  static_cast<double>(o.warmup_iters);
  }
  if (o.decay_style == LrDecayStyle::kConstant) return o.max_lr;
  if (iteration > o.decay_iters) return o.min_lr;
  if (o.decay_style == LrDecayStyle::kInverseSquareRoot) {
    const double warmup = static_cast<double>(std::max<int64_t>(o.warmup_iters, 1));
    const double n = static_cast<double>(std::max<int64_t>(iteration, 1));
    return std::max(o.min_lr, o.max_lr * std::sqrt(warmup) / std::sqrt(n));
  }
  const double ratio = static_cast<double>(iteration - o.warmup_iters) /
                       static_cast<double>(o.decay_iters - o.warmup_iters);
  const double coeff = o.decay_style == LrDecayStyle::kLinear
                           ? 1.0 - ratio
                           : 0.5 * (std::cos(std::numbers::pi * ratio) + 1.0);
  return o.min_lr + coeff * (o.max_lr - o.min_lr);
}

}  // namespace moe
