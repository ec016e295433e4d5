// Timing helpers for benchmarks: repeat a body, keep every sample, report the
// median and the spread (min, max). Machines are shared and noisy, so a
// benchmark prints a ratio against a peer measured in the same run.
#ifndef MOE_BENCH_BENCH_UTIL_H_
#define MOE_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>
#include <vector>

namespace moe::bench {

struct Timing {
  double median_s = 0;
  double min_s = 0;
  double max_s = 0;
};

// Runs body() `warmup` times untimed, then `repeats` timed.
inline Timing Measure(const std::function<void()>& body, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) body();
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    const auto end = std::chrono::steady_clock::now();
    samples.push_back(std::chrono::duration<double>(end - start).count());
  }
  std::sort(samples.begin(), samples.end());
  return Timing{samples[samples.size() / 2], samples.front(), samples.back()};
}

// Times two bodies alternately (a, b, a, b, ...) so that a change in machine
// load during the run hits both sides alike; returns {a, b}.
inline std::pair<Timing, Timing> MeasurePair(const std::function<void()>& a,
                                             const std::function<void()>& b, int warmup,
                                             int repeats) {
  for (int i = 0; i < warmup; ++i) {
    a();
    b();
  }
  std::vector<double> samples_a, samples_b;
  for (int i = 0; i < repeats; ++i) {
    for (auto [body, samples] : {std::pair{&a, &samples_a}, std::pair{&b, &samples_b}}) {
      const auto start = std::chrono::steady_clock::now();
      (*body)();
      const auto end = std::chrono::steady_clock::now();
      samples->push_back(std::chrono::duration<double>(end - start).count());
    }
  }
  auto summarize = [](std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    return Timing{v[v.size() / 2], v.front(), v.back()};
  };
  return {summarize(samples_a), summarize(samples_b)};
}

}  // namespace moe::bench

#endif  // MOE_BENCH_BENCH_UTIL_H_
