#include "core/metrics/metrics_server.h"

#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prometheus/client_metric.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "prometheus/metric_family.h"

namespace moe {

namespace {

// Turns our registry into prometheus-cpp's families at each scrape.
class RegistryCollectable final : public prometheus::Collectable {
 public:
  explicit RegistryCollectable(const MetricRegistry* registry) : registry_(registry) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    for (const MetricFamilySnapshot& family : registry_->Collect()) {
      prometheus::MetricFamily converted;
      converted.name = family.name;
      converted.help = family.help;
      converted.type = family.type == MetricType::kCounter ? prometheus::MetricType::Counter
                                                           : prometheus::MetricType::Gauge;
      for (const MetricSample& sample : family.samples) {
        prometheus::ClientMetric metric;
        for (const auto& [name, value] : sample.labels) metric.label.push_back({name, value});
        if (family.type == MetricType::kCounter) {
          metric.counter.value = sample.value;
        } else {
          metric.gauge.value = sample.value;
        }
        converted.metric.push_back(std::move(metric));
      }
      out.push_back(std::move(converted));
    }
    return out;
  }

 private:
  const MetricRegistry* registry_;
};

}  // namespace

struct MetricsServer::Impl {
  std::shared_ptr<RegistryCollectable> collectable;
  // Declared last: destroyed first, so no scrape runs on a dead collectable.
  std::unique_ptr<prometheus::Exposer> exposer;
};

bool MetricsServer::Available() { return true; }

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const MetricRegistry* registry,
                                                                    int port,
                                                                    const std::string& address) {
  const std::string bind = absl::StrCat(address, ":", port);
  auto impl = std::make_unique<Impl>();
  impl->collectable = std::make_shared<RegistryCollectable>(registry);
  try {
    // One HTTP thread: Prometheus scrapes one target at a time.
    impl->exposer = std::make_unique<prometheus::Exposer>(bind, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", bind, " (", e.what(),
                                               "); the port is probably in use: choose another"));
  }
  impl->exposer->RegisterCollectable(impl->collectable);
  const std::vector<int> ports = impl->exposer->GetListeningPorts();
  const int bound = ports.empty() ? port : ports.front();
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl), bound));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}

MetricsServer::~MetricsServer() = default;

}  // namespace moe
