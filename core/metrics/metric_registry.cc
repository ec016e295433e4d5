#include "core/metrics/metric_registry.h"

#include "core/check.h"

namespace moe {

namespace {

bool IsNameChar(char c, bool first, bool colon_allowed) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon_allowed && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

bool IsValidName(std::string_view name, bool colon_allowed) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, colon_allowed)) return false;
  }
  return true;
}

const char* TypeName(MetricType type) { return type == MetricType::kCounter ? "counter" : "gauge"; }

}  // namespace

void Counter::Increment(double by) {
  MOE_CHECK(by >= 0) << "Counter::Increment: a counter only goes up, got " << by;
  value_.fetch_add(by, std::memory_order_relaxed);
}

void MetricRegistry::AddSeries(std::string_view name, std::string_view help, MetricType type,
                               Series series) {
  MOE_CHECK(IsValidName(name, /*colon_allowed=*/true))
      << "MetricRegistry: '" << name
      << "' is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)";
  const bool total = name.size() > 6 && name.substr(name.size() - 6) == "_total";
  MOE_CHECK((type == MetricType::kCounter) == total)
      << "MetricRegistry: " << name << ": counters, and only counters, end in _total";
  for (const auto& [label, value] : series.labels) {
    MOE_CHECK(IsValidName(label, /*colon_allowed=*/false) && label.rfind("__", 0) != 0)
        << "MetricRegistry: " << name << ": '" << label << "' is not a valid label name";
  }
  std::lock_guard<std::mutex> lock(mutex_);
  Family* family = nullptr;
  for (Family& f : families_) {
    if (f.name == name) family = &f;
  }
  if (family == nullptr) {
    family = &families_.emplace_back(Family{std::string(name), std::string(help), type, {}});
  }
  MOE_CHECK(family->type == type && family->help == help)
      << "MetricRegistry: " << name << " was added as a " << TypeName(family->type)
      << " with help '" << family->help << "'; every series of a family shares both";
  for (const Series& s : family->series) {
    MOE_CHECK(s.labels != series.labels)
        << "MetricRegistry: " << name << " already has a series with these labels";
  }
  family->series.push_back(std::move(series));
}

Gauge* MetricRegistry::AddGauge(std::string_view name, std::string_view help, MetricLabels labels) {
  auto gauge = std::make_unique<Gauge>();
  Gauge* result = gauge.get();
  AddSeries(name, help, MetricType::kGauge,
            Series{std::move(labels), std::move(gauge), nullptr, {}});
  return result;
}

Counter* MetricRegistry::AddCounter(std::string_view name, std::string_view help,
                                    MetricLabels labels) {
  auto counter = std::make_unique<Counter>();
  Counter* result = counter.get();
  AddSeries(name, help, MetricType::kCounter,
            Series{std::move(labels), nullptr, std::move(counter), {}});
  return result;
}

void MetricRegistry::AddGaugeCallback(std::string_view name, std::string_view help,
                                      MetricLabels labels, std::function<double()> read) {
  MOE_CHECK(read != nullptr) << "MetricRegistry: " << name << ": empty callback";
  AddSeries(name, help, MetricType::kGauge,
            Series{std::move(labels), nullptr, nullptr, std::move(read)});
}

std::vector<MetricFamilySnapshot> MetricRegistry::Collect() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<MetricFamilySnapshot> out;
  out.reserve(families_.size());
  for (const Family& family : families_) {
    MetricFamilySnapshot snapshot{family.name, family.help, family.type, {}};
    snapshot.samples.reserve(family.series.size());
    for (const Series& s : family.series) {
      double value = 0;
      if (s.gauge != nullptr) value = s.gauge->value();
      if (s.counter != nullptr) value = s.counter->value();
      if (s.read != nullptr) value = s.read();
      snapshot.samples.push_back(MetricSample{s.labels, value});
    }
    out.push_back(std::move(snapshot));
  }
  return out;
}

}  // namespace moe
