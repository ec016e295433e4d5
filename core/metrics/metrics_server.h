// Serves a MetricRegistry in the Prometheus text exposition format at
// http://ADDRESS:PORT/metrics, through prometheus-cpp's Exposer (its own
// HTTP threads: a scrape never runs on the training thread).
//
// prometheus-cpp is optional in the build (a GPU machine may lack it): a
// build without it still has this class, and Start() then fails with a
// message saying how to get it, so a requested --metrics_port is never
// silently ignored.
#ifndef MOE_CORE_METRICS_METRICS_SERVER_H_
#define MOE_CORE_METRICS_METRICS_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/metrics/metric_registry.h"

namespace moe {

class MetricsServer {
 public:
  // Whether this build can serve (it has prometheus-cpp).
  static bool Available();

  // Listens on `address`:`port` (port 0: a free port, see port()) and serves
  // `registry`, which must outlive the server. Fails, naming the address,
  // when the port is taken or the build has no prometheus-cpp.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const MetricRegistry* registry, int port, const std::string& address = "0.0.0.0");
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  struct Impl;
  MetricsServer(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace moe

#endif  // MOE_CORE_METRICS_METRICS_SERVER_H_
