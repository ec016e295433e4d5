// The Prometheus metrics of moe-train (--metrics_port): every series, its
// name and meaning, in one table here (README "Metrics" lists them too).
//
// Scheme: every rank r serves on --metrics_port + r. Rank 0 serves the job's
// series (losses, learning rate, throughput, MFU, ... — values that are the
// same for the whole job, since the trainer all-reduces them); every rank,
// rank 0 included, serves its own process series labelled rank="r" (alive,
// memory in use). A scrape config lists the ports of the ranks of each node
// (examples/monitoring/prometheus.yml).
//
// Job series (rank 0), updated once per step from StepStats:
//   moe_train_loss, _lm_loss, _aux_loss, _z_loss       gauges, last step
//   moe_train_learning_rate, moe_train_grad_norm        gauges, last step
//   moe_train_step                                      gauge, the last step's number (continues
//                                                       across a resume, unlike steps_total)
//   moe_train_step_seconds                              gauge, wall time of the last step
//   moe_train_step_seconds_total                        counter, sum of step times
//   moe_train_steps_total, moe_train_skipped_steps_total counters
//   moe_train_tokens_total, moe_train_tokens_per_second counter, gauge (label tokens)
//   moe_train_model_flops_per_second                    gauge: 6 * active params * tokens / step s
//   moe_train_mfu_ratio                                 gauge: that / (peak * world size); only
//                                                       with --mfu_peak_tflops > 0
//   moe_train_validation_loss                           gauge, at validation steps
//   moe_train_last_step_timestamp_seconds               gauge, Unix time of the last step
//                                                       (heartbeat: alert when it stops moving)
//   moe_train_checkpoint_save_seconds                   gauge, last save; saves_total counter
//   moe_train_expert_tokens_total{layer,expert}         counters, tokens routed to each expert
//   moe_train_expert_dropped_tokens_total{layer,expert} counters, of those dropped (capacity)
//   moe_train_communication_{exposed,hidden}_seconds_total counters
// The validation, checkpoint-time, expert and communication series appear at
// their first observation, so that a 0 never reads as a value (the trainer
// does not measure expert tokens nor communication time yet: ObserveExperts
// and ObserveCommunication are there for it).
//
// Process series (every rank, label rank):
//   moe_train_up{rank}                          gauge 1 while the process serves
//   moe_train_resident_memory_bytes{rank}       gauge, read at scrape time (/proc/self/statm)
//   moe_train_peak_resident_memory_bytes{rank}  gauge, read at scrape time (VmHWM)
//   moe_train_start_time_seconds{rank}          gauge, Unix time the process started serving
//
// Cost: an observation is a few relaxed atomic stores, no lock and no
// allocation (memory is read only when scraped); docs/BENCHMARKS.md
// "Metrics overhead" measures it against the step time.
#ifndef MOE_LAUNCHER_TRAIN_METRICS_H_
#define MOE_LAUNCHER_TRAIN_METRICS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "core/metrics/metric_registry.h"
#include "core/metrics/metrics_server.h"
#include "launcher/step_log.h"

namespace moe {

struct TrainMetricsOptions {
  int rank = 0;
  int world_size = 1;
  // Parameters one token passes through (Model::NumActiveParameters): the
  // model FLOPs of a step are 6 * active_parameters * tokens.
  int64_t active_parameters = 0;
  // Peak FLOP/s of one rank's device, in TFLOP/s, for MFU; 0 = no MFU series.
  double peak_tflops = 0;
};

class TrainMetrics {
 public:
  explicit TrainMetrics(const TrainMetricsOptions& options);
  TrainMetrics(const TrainMetrics&) = delete;
  TrainMetrics& operator=(const TrainMetrics&) = delete;

  // Serves the series on `base_port` + rank (all interfaces). The error
  // names --metrics_port and the port.
  absl::Status Serve(int base_port);
  int port() const { return server_ != nullptr ? server_->port() : 0; }
  // The model is built after the server starts (a taken port is reported
  // before anything is allocated); its size comes then.
  void set_active_parameters(int64_t n) { options_.active_parameters = n; }

  // One optimizer step (rank 0; other ranks have no job series and ignore it).
  void ObserveStep(const StepStats& stats);
  // A finished checkpoint save and its wall time.
  void ObserveCheckpointSave(double seconds);
  // Tokens routed to and dropped by each expert in one step, [layer][expert]
  // (summed over the job). The shape is fixed by the first call.
  void ObserveExperts(const std::vector<std::vector<int64_t>>& tokens_LE,
                      const std::vector<std::vector<int64_t>>& dropped_LE);
  // Communication time of one step: waited for (exposed) and overlapped
  // with compute (hidden).
  void ObserveCommunication(double exposed_seconds, double hidden_seconds);

  const MetricRegistry& registry() const { return registry_; }

 private:
  TrainMetricsOptions options_;
  MetricRegistry registry_;
  std::unique_ptr<MetricsServer> server_;
  bool job_ = false;  // rank 0
  Gauge* loss_ = nullptr;
  Gauge* lm_loss_ = nullptr;
  Gauge* aux_loss_ = nullptr;
  Gauge* z_loss_ = nullptr;
  Gauge* lr_ = nullptr;
  Gauge* grad_norm_ = nullptr;
  Gauge* step_ = nullptr;
  Gauge* step_seconds_ = nullptr;
  Counter* step_seconds_total_ = nullptr;
  Counter* steps_total_ = nullptr;
  Counter* skipped_steps_total_ = nullptr;
  Counter* tokens_total_ = nullptr;
  Gauge* tokens_per_second_ = nullptr;
  Gauge* model_flops_per_second_ = nullptr;
  Gauge* mfu_ = nullptr;
  Gauge* validation_loss_ = nullptr;
  Gauge* last_step_timestamp_ = nullptr;
  Gauge* checkpoint_save_seconds_ = nullptr;
  Counter* checkpoint_saves_total_ = nullptr;
  std::vector<std::vector<Counter*>> expert_tokens_LE_;
  std::vector<std::vector<Counter*>> expert_dropped_LE_;
  Counter* comm_exposed_total_ = nullptr;
  Counter* comm_hidden_total_ = nullptr;
};

}  // namespace moe

#endif  // MOE_LAUNCHER_TRAIN_METRICS_H_
