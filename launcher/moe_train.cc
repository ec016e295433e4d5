// moe-train: trains a Mixtral-shaped MoE model on one process.
//
//   build/bin/moe-train --flagfile=examples/recipes/mixtral-tiny.flags
//
// Exit codes: 0 done; 2 a bad flag or data set (one line on stderr naming the
// flag and a fix, before anything is allocated); 1 a failure while training
// (a diverged run, a token outside the vocabulary deeper in the data, an
// unwritable log). Abseil reports unknown flags and unparsable values itself.
#include <omp.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "launcher/step_log.h"
#include "launcher/train_flags.h"
#include "launcher/trainer.h"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

int Fail(int code, const absl::Status& status) {
  std::cerr << "moe-train: error: " << status.message() << std::endl;
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  moe::SetTrainUsage();
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return Fail(kExitUsage,
                absl::InvalidArgumentError(std::string("unexpected argument '") + positional[1] +
                                           "'; moe-train takes only --flags (see --help)"));
  }
  absl::StatusOr<moe::TrainSettings> settings = moe::TrainSettingsFromFlags();
  if (!settings.ok()) return Fail(kExitUsage, settings.status());
  if (settings->threads > 0) omp_set_num_threads(settings->threads);

  std::optional<moe::StepLog> log;
  if (!settings->log_jsonl.empty()) {
    absl::StatusOr<moe::StepLog> opened = moe::StepLog::Open(settings->log_jsonl);
    if (!opened.ok()) return Fail(kExitUsage, opened.status());
    log = std::move(*opened);
  }
  absl::StatusOr<std::unique_ptr<moe::Trainer>> trainer = moe::Trainer::Create(settings->trainer);
  if (!trainer.ok()) return Fail(kExitUsage, trainer.status());

  std::cout << "moe-train: " << omp_get_max_threads() << " threads\n" << (*trainer)->Summary();
  if (log.has_value()) std::cout << "log       " << log->path() << " (one JSON object per step)\n";
  std::cout << std::flush;

  if (absl::Status s = (*trainer)->Train(log.has_value() ? &*log : nullptr, &std::cout); !s.ok()) {
    return Fail(kExitFailure, s);
  }
  if (log.has_value()) std::cout << "moe-train: done; step log in " << log->path() << std::endl;
  return 0;
}
