// MetricsServer of a build without prometheus-cpp: every Start() says how to
// get it.
#include <utility>

#include "absl/status/status.h"
#include "core/metrics/metrics_server.h"

namespace moe {

struct MetricsServer::Impl {};

bool MetricsServer::Available() { return false; }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const MetricRegistry*, int,
                                                                    const std::string&) {
  return absl::FailedPreconditionError(
      "this build has no Prometheus exporter: install prometheus-cpp (Debian: "
      "prometheus-cpp-dev, scripts/install-deps.sh does) and rebuild, or leave --metrics_port=0");
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() = default;

}  // namespace moe
