#include "launcher/step_log.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {

namespace {

// JSON has no NaN or infinity (a diverged step's losses and norm): null.
Json Number(double value) { return std::isfinite(value) ? Json(value) : Json(); }

}  // namespace

Json StepRecord(const StepStats& stats) {
  Json record = Json::MakeObject();
  record.Set("step", stats.step);
  record.Set("loss", Number(stats.loss));
  record.Set("lm_loss", Number(stats.lm_loss));
  record.Set("aux_loss", Number(stats.aux_loss));
  record.Set("z_loss", Number(stats.z_loss));
  record.Set("lr", Number(stats.lr));
  record.Set("grad_norm", Number(stats.grad_norm));
  record.Set("tokens_per_s", Number(stats.tokens_per_s));
  record.Set("step_s", Number(stats.step_s));
  if (stats.val_loss.has_value()) record.Set("val_loss", Number(*stats.val_loss));
  if (stats.skipped) record.Set("skipped", true);
  if (stats.entropy_loss != 0) record.Set("entropy_loss", Number(stats.entropy_loss));
  auto matrix = [](const std::vector<std::vector<double>>& rows) {
    Json out = Json::MakeArray();
    for (const std::vector<double>& row : rows) {
      Json r = Json::MakeArray();
      for (double v : row) r.Append(Number(v));
      out.Append(std::move(r));
    }
    return out;
  };
  auto vector = [](const std::vector<double>& values) {
    Json out = Json::MakeArray();
    for (double v : values) out.Append(Number(v));
    return out;
  };
  if (stats.comm_exposed_s > 0 || stats.comm_hidden_s > 0) {
    record.Set("comm_exposed_s", Number(stats.comm_exposed_s));
    record.Set("comm_hidden_s", Number(stats.comm_hidden_s));
  }
  if (!stats.expert_tokens.empty()) {
    record.Set("expert_tokens", matrix(stats.expert_tokens));
    record.Set("expert_dropped", matrix(stats.expert_dropped));
    record.Set("router_entropy", vector(stats.router_entropy));
    record.Set("load_balance", vector(stats.load_balance));
  }
  return record;
}

namespace {

// 12345 -> "12.3k", 1234567 -> "1.23M": throughput at a glance.
std::string HumanRate(double per_s) {
  if (per_s >= 1e6) return absl::StrFormat("%.2fM", per_s / 1e6);
  if (per_s >= 1e3) return absl::StrFormat("%.1fk", per_s / 1e3);
  return absl::StrFormat("%.0f", per_s);
}

}  // namespace

std::string FormatStepLine(const StepStats& stats, int64_t train_iters, bool show_z) {
  std::string line = absl::StrFormat("step %d/%d | loss %.4f | lm %.4f | aux %.4f", stats.step,
                                     train_iters, stats.loss, stats.lm_loss, stats.aux_loss);
  if (show_z) absl::StrAppendFormat(&line, " | z %.4f", stats.z_loss);
  absl::StrAppendFormat(&line, " | lr %.1e | grad %.3f | %s tok/s | %.3f s", stats.lr,
                        stats.grad_norm, HumanRate(stats.tokens_per_s), stats.step_s);
  if (stats.skipped) absl::StrAppend(&line, " | skipped (non-finite gradient norm)");
  return line;
}

std::string FormatValidationLine(int64_t step, double val_loss) {
  return absl::StrFormat("validation | step %d | val loss %.4f | val ppl %.2f", step, val_loss,
                         std::exp(val_loss));
}

absl::StatusOr<StepLog> StepLog::Open(const std::string& path) {
  // Recipes name a log under out/<recipe>/; make that directory on first use.
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::error_code error;
  if (!parent.empty()) std::filesystem::create_directories(parent, error);
  std::FILE* file = std::fopen(path.c_str(), "a");
  if (file == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--log_jsonl=", path, ": cannot open for appending (", std::strerror(errno),
                     "); create its directory or choose another path"));
  }
  // Line buffering writes each record out at its newline; Write also flushes
  // explicitly, since line buffering is only a request.
  std::setvbuf(file, nullptr, _IOLBF, 1 << 16);
  return StepLog(path, file);
}

StepLog::StepLog(StepLog&& other) noexcept
    : path_(std::move(other.path_)),
      file_(std::exchange(other.file_, nullptr)),
      observers_(std::move(other.observers_)) {}

StepLog& StepLog::operator=(StepLog&& other) noexcept {
  if (this != &other) {
    if (file_ != nullptr) std::fclose(file_);
    path_ = std::move(other.path_);
    file_ = std::exchange(other.file_, nullptr);
    observers_ = std::move(other.observers_);
  }
  return *this;
}

StepLog::~StepLog() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status StepLog::Write(const StepStats& stats) {
  if (file_ != nullptr) {
    const std::string line = StepRecord(stats).Dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
      return absl::InternalError(
          absl::StrCat("--log_jsonl=", path_, ": write failed (", std::strerror(errno), ")"));
    }
  }
  for (const auto& observer : observers_) observer(stats);
  return absl::OkStatus();
}

}  // namespace moe
