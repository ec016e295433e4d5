#include "launcher/train_metrics.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace moe {

namespace {

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Resident set size from /proc/self/statm (its second field, in pages); 0
// where there is no /proc.
double ResidentBytes() {
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  if (file == nullptr) return 0;
  long long size = 0;
  long long resident = 0;
  const int read = std::fscanf(file, "%lld %lld", &size, &resident);
  std::fclose(file);
  return read == 2 ? static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE))
                   : 0.0;
}

// The high-water mark of the resident set (VmHWM in /proc/self/status, kB).
double PeakResidentBytes() {
  std::FILE* file = std::fopen("/proc/self/status", "r");
  if (file == nullptr) return 0;
  char line[256];
  double bytes = 0;
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    long long kb = 0;
    if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) {
      bytes = static_cast<double>(kb) * 1024.0;
      break;
    }
  }
  std::fclose(file);
  return bytes;
}

}  // namespace

TrainMetrics::TrainMetrics(const TrainMetricsOptions& options)
    : options_(options), job_(options.rank == 0) {
  const MetricLabels rank = {{"rank", std::to_string(options.rank)}};
  registry_.AddGauge("moe_train_up", "1 while this rank's moe-train process serves metrics.", rank)
      ->Set(1);
  registry_
      .AddGauge("moe_train_start_time_seconds",
                "Unix time at which this rank started serving metrics.", rank)
      ->Set(UnixSeconds());
  registry_.AddGaugeCallback("moe_train_resident_memory_bytes",
                             "Resident memory of this rank's process (RSS).", rank, ResidentBytes);
  registry_.AddGaugeCallback("moe_train_peak_resident_memory_bytes",
                             "Highest resident memory of this rank's process so far.", rank,
                             PeakResidentBytes);
  if (!job_) return;

  MetricRegistry& r = registry_;
  loss_ = r.AddGauge("moe_train_loss",
                     "Training objective of the last step: lm + aux and z losses times their "
                     "coefficients.");
  lm_loss_ = r.AddGauge("moe_train_lm_loss",
                        "Mean cross-entropy per label token of the last step's global batch "
                        "(nats).");
  aux_loss_ = r.AddGauge("moe_train_aux_loss",
                         "Load-balancing loss of the last step (not times its coefficient).");
  z_loss_ =
      r.AddGauge("moe_train_z_loss", "Router z-loss of the last step (not times its coefficient).");
  lr_ = r.AddGauge("moe_train_learning_rate", "Learning rate of the last step.");
  grad_norm_ =
      r.AddGauge("moe_train_grad_norm", "Global gradient norm of the last step, before clipping.");
  step_ = r.AddGauge("moe_train_step", "Number of the last step (continues across a resume).");
  step_seconds_ = r.AddGauge("moe_train_step_seconds", "Wall time of the last step.");
  step_seconds_total_ =
      r.AddCounter("moe_train_step_seconds_total", "Wall time of all steps of this process.");
  steps_total_ = r.AddCounter("moe_train_steps_total", "Optimizer steps done by this process.");
  skipped_steps_total_ =
      r.AddCounter("moe_train_skipped_steps_total",
                   "Steps whose gradient norm was not finite, so that no update was made.");
  tokens_total_ =
      r.AddCounter("moe_train_tokens_total", "Label tokens trained on by this process's steps.");
  tokens_per_second_ = r.AddGauge("moe_train_tokens_per_second",
                                  "Label tokens of the last step's global batch per second.");
  model_flops_per_second_ =
      r.AddGauge("moe_train_model_flops_per_second",
                 "Model FLOP/s of the last step for the job: 6 * active parameters * tokens / "
                 "step seconds.");
  if (options_.peak_tflops > 0) {
    mfu_ = r.AddGauge("moe_train_mfu_ratio",
                      "Model FLOPs utilization of the last step: model FLOP/s over "
                      "--mfu_peak_tflops times the world size.");
  }
  last_step_timestamp_ = r.AddGauge("moe_train_last_step_timestamp_seconds",
                                    "Unix time at which the last step ended (a heartbeat).");
  checkpoint_saves_total_ =
      r.AddCounter("moe_train_checkpoint_saves_total", "Checkpoints saved by this process.");
}

absl::Status TrainMetrics::Serve(int base_port) {
  MOE_CHECK(server_ == nullptr) << "TrainMetrics::Serve: already serving on port " << port();
  const int port = base_port + options_.rank;
  absl::StatusOr<std::unique_ptr<MetricsServer>> server = MetricsServer::Start(&registry_, port);
  if (!server.ok()) {
    return absl::Status(server.status().code(),
                        absl::StrCat("--metrics_port=", base_port, " (rank ", options_.rank,
                                     " serves on port ", port, "): ", server.status().message()));
  }
  server_ = std::move(*server);
  return absl::OkStatus();
}

void TrainMetrics::ObserveStep(const StepStats& stats) {
  if (!job_) return;
  loss_->Set(stats.loss);
  lm_loss_->Set(stats.lm_loss);
  aux_loss_->Set(stats.aux_loss);
  z_loss_->Set(stats.z_loss);
  lr_->Set(stats.lr);
  grad_norm_->Set(stats.grad_norm);
  step_->Set(static_cast<double>(stats.step));
  step_seconds_->Set(stats.step_s);
  step_seconds_total_->Increment(stats.step_s);
  steps_total_->Increment();
  if (stats.skipped) skipped_steps_total_->Increment();
  tokens_total_->Increment(static_cast<double>(stats.tokens));
  tokens_per_second_->Set(stats.tokens_per_s);
  const double flops_per_s = stats.step_s > 0
                                 ? 6.0 * static_cast<double>(options_.active_parameters) *
                                       static_cast<double>(stats.tokens) / stats.step_s
                                 : 0.0;
  model_flops_per_second_->Set(flops_per_s);
  if (mfu_ != nullptr) {
    mfu_->Set(flops_per_s / (options_.peak_tflops * 1e12 * options_.world_size));
  }
  if (stats.val_loss.has_value()) {
    // Appears at the first validation: a 0 before it would read as a loss.
    if (validation_loss_ == nullptr) {
      validation_loss_ = registry_.AddGauge("moe_train_validation_loss",
                                            "Mean validation cross-entropy per token at the last "
                                            "validation.");
    }
    validation_loss_->Set(*stats.val_loss);
  }
  last_step_timestamp_->Set(UnixSeconds());
}

void TrainMetrics::ObserveCheckpointSave(double seconds) {
  if (!job_) return;
  if (checkpoint_save_seconds_ == nullptr) {
    checkpoint_save_seconds_ = registry_.AddGauge("moe_train_checkpoint_save_seconds",
                                                  "Wall time of the last checkpoint save.");
  }
  checkpoint_save_seconds_->Set(seconds);
  checkpoint_saves_total_->Increment();
}

void TrainMetrics::ObserveExperts(const std::vector<std::vector<int64_t>>& tokens_LE,
                                  const std::vector<std::vector<int64_t>>& dropped_LE) {
  if (!job_) return;
  MOE_CHECK(tokens_LE.size() == dropped_LE.size())
      << "TrainMetrics::ObserveExperts: " << tokens_LE.size() << " layers of tokens but "
      << dropped_LE.size() << " of dropped tokens";
  if (expert_tokens_LE_.empty()) {
    for (size_t l = 0; l < tokens_LE.size(); ++l) {
      expert_tokens_LE_.emplace_back();
      expert_dropped_LE_.emplace_back();
      for (size_t e = 0; e < tokens_LE[l].size(); ++e) {
        const MetricLabels labels = {{"layer", std::to_string(l)}, {"expert", std::to_string(e)}};
        expert_tokens_LE_[l].push_back(
            registry_.AddCounter("moe_train_expert_tokens_total",
                                 "Tokens routed to each expert of each MoE layer.", labels));
        expert_dropped_LE_[l].push_back(registry_.AddCounter(
            "moe_train_expert_dropped_tokens_total",
            "Tokens routed to each expert that its capacity dropped.", labels));
      }
    }
  }
  MOE_CHECK(tokens_LE.size() == expert_tokens_LE_.size())
      << "TrainMetrics::ObserveExperts: " << tokens_LE.size() << " layers, first call had "
      << expert_tokens_LE_.size();
  for (size_t l = 0; l < tokens_LE.size(); ++l) {
    MOE_CHECK(tokens_LE[l].size() == expert_tokens_LE_[l].size() &&
              dropped_LE[l].size() == expert_tokens_LE_[l].size())
        << "TrainMetrics::ObserveExperts: layer " << l << " has " << tokens_LE[l].size()
        << " experts (dropped: " << dropped_LE[l].size() << "), first call had "
        << expert_tokens_LE_[l].size();
    for (size_t e = 0; e < tokens_LE[l].size(); ++e) {
      expert_tokens_LE_[l][e]->Increment(static_cast<double>(tokens_LE[l][e]));
      expert_dropped_LE_[l][e]->Increment(static_cast<double>(dropped_LE[l][e]));
    }
  }
}

void TrainMetrics::ObserveCommunication(double exposed_seconds, double hidden_seconds) {
  if (!job_) return;
  if (comm_exposed_total_ == nullptr) {
    comm_exposed_total_ =
        registry_.AddCounter("moe_train_communication_exposed_seconds_total",
                             "Communication time that computation waited for (not overlapped).");
    comm_hidden_total_ = registry_.AddCounter("moe_train_communication_hidden_seconds_total",
                                              "Communication time overlapped with computation.");
  }
  comm_exposed_total_->Increment(exposed_seconds);
  comm_hidden_total_->Increment(hidden_seconds);
}

}  // namespace moe
