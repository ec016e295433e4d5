// Gauges and counters that a training process updates and a Prometheus
// server reads (core/metrics/metrics_server.h serves them over HTTP).
//
//   MetricRegistry registry;
//   Gauge* loss = registry.AddGauge("moe_train_loss", "Training loss of the last step.");
//   Counter* steps = registry.AddCounter("moe_train_steps_total", "Optimizer steps done.");
//   loss->Set(2.31);     // per step: one relaxed atomic store, no lock
//   steps->Increment();
//
// Updates are lock-free so that the training loop never waits for a scrape;
// adding series and collecting them take a mutex. A scrape sees every value
// as it stood at some moment during the scrape (values of one step may be
// seen half-updated; Prometheus scrapes are not atomic either).
//
// Names follow Prometheus' rules and conventions, checked when a series is
// added (a programming error, so MOE_CHECK): [a-zA-Z_:][a-zA-Z0-9_:]*,
// counters end in "_total", label names [a-zA-Z_][a-zA-Z0-9_]* and never
// start with "__". Series of one name form a family: same type and help,
// distinct label sets.
//
// This part has no dependency on prometheus-cpp, so it builds (and its tests
// run) everywhere; only serving needs the library.
#ifndef MOE_CORE_METRICS_METRIC_REGISTRY_H_
#define MOE_CORE_METRICS_METRIC_REGISTRY_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe {

enum class MetricType { kGauge, kCounter };

// Label name and value pairs, in the order given.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Only goes up (a restart of the process starts it at 0 again, which
// Prometheus' rate() understands).
class Counter {
 public:
  // `by` must be >= 0.
  void Increment(double by = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

struct MetricSample {
  MetricLabels labels;
  double value = 0;
};

// One family as a scrape sees it.
struct MetricFamilySnapshot {
  std::string name;
  std::string help;
  MetricType type = MetricType::kGauge;
  std::vector<MetricSample> samples;
};

class MetricRegistry {
 public:
  MetricRegistry() = default;
  MetricRegistry(const MetricRegistry&) = delete;
  MetricRegistry& operator=(const MetricRegistry&) = delete;

  // The returned series lives as long as the registry. Adding a label set
  // that the family already has is an error.
  Gauge* AddGauge(std::string_view name, std::string_view help, MetricLabels labels = {});
  Counter* AddCounter(std::string_view name, std::string_view help, MetricLabels labels = {});
  // A gauge whose value is computed when it is collected (memory in use,
  // say), so that it costs nothing between scrapes. `read` runs on the
  // scraping thread and must be thread-safe.
  void AddGaugeCallback(std::string_view name, std::string_view help, MetricLabels labels,
                        std::function<double()> read);

  // Every family in the order first added, its series in the order added.
  std::vector<MetricFamilySnapshot> Collect() const;

 private:
  struct Series {
    MetricLabels labels;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Counter> counter;
    std::function<double()> read;
  };
  struct Family {
    std::string name;
    std::string help;
    MetricType type;
    std::vector<Series> series;
  };
  // Checks the names, finds or makes the family and appends `series` to it.
  void AddSeries(std::string_view name, std::string_view help, MetricType type, Series series);

  mutable std::mutex mutex_;
  std::deque<Family> families_;
};

}  // namespace moe

#endif  // MOE_CORE_METRICS_METRIC_REGISTRY_H_
