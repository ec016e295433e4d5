// moe-train: trains a Mixtral-shaped MoE model on one process, or on many
// under mpirun (data parallel: every rank a DP rank).
//
//   build/bin/moe-train --flagfile=examples/recipes/mixtral-tiny.flags
//   mpirun -n 2 build/bin/moe-train --flagfile=examples/recipes/mixtral-tiny.flags
//
// Under mpirun (detected from the launcher's environment) MPI is initialised
// with MPI_THREAD_MULTIPLE and the ranks talk over MpiCommunicator; started
// alone, or built without MPI, it is one rank on a LocalCommunicator (no
// MPI_Init at all, so a plain run needs no MPI runtime). Only rank 0 prints
// and writes --log_jsonl; every rank prints its own errors.
//
// Exit codes: 0 done; 2 a bad flag, layout or data set (one line on stderr
// naming the flag and a fix, before anything is allocated); 1 a failure while
// training (a diverged run, a token outside the vocabulary deeper in the
// data, an unwritable log, a failed checkpoint save, a checkpoint whose
// tensors fail their checksums). Abseil reports unknown flags and
// unparsable values itself.
//
// SIGTERM or SIGINT: the step in progress finishes, every rank agrees to
// stop after it, a checkpoint is saved (with --save), and the exit code is 0.
// A second signal ends the process at once.
#include <omp.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "launcher/checkpoint.h"
#include "launcher/step_log.h"
#include "launcher/train_flags.h"
#include "launcher/train_metrics.h"
#include "launcher/trainer.h"
#include "parallel/local_communicator.h"
#ifdef MOE_WITH_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

int g_rank = 0;

// Set by SIGTERM/SIGINT; the trainer finishes its step, saves and returns.
std::atomic<bool> g_stop_requested{false};

void OnStopSignal(int /*signal*/) { g_stop_requested.store(true); }

// SA_RESETHAND: a second signal ends the process at once (Ctrl-C twice).
void InstallStopHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

// A bad flag or layout is found by every rank alike (same flags, same data):
// rank 0 alone says so. A failure while training may be one rank's own, so
// every rank reports those, naming itself.
int Fail(int code, const absl::Status& status) {
  if (code == kExitUsage && g_rank > 0) return code;
  std::cerr << "moe-train: " << (g_rank > 0 ? "rank " + std::to_string(g_rank) + ": " : "")
            << "error: " << status.message() << std::endl;
  return code;
}

// Whether an MPI launcher (mpirun of OpenMPI or MPICH, srun with PMI/PMIx)
// started this process.
bool StartedByMpiLauncher() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(name) != nullptr) return true;
  }
  return false;
}

int Run(moe::Communicator* world) {
  g_rank = world->rank();
  const bool lead = world->rank() == 0;
  absl::StatusOr<moe::TrainSettings> settings = moe::TrainSettingsFromFlags();
  if (!settings.ok()) return Fail(kExitUsage, settings.status());
  if (settings->threads > 0) omp_set_num_threads(settings->threads);
  // From here a signal no longer kills the process: it asks the trainer to
  // stop after its current (or first) step and save.
  InstallStopHandlers();

  if (settings->print_grid) {
    absl::StatusOr<moe::RankGrid> grid = moe::BuildRankGrid(settings->trainer, world->size());
    if (!grid.ok()) return Fail(kExitUsage, grid.status());
    if (lead) std::cout << grid->Describe() << std::flush;
    return 0;
  }

  std::optional<moe::StepLog> log;
  if (lead && !settings->log_jsonl.empty()) {
    absl::StatusOr<moe::StepLog> opened = moe::StepLog::Open(settings->log_jsonl);
    if (!opened.ok()) return Fail(kExitUsage, opened.status());
    log = std::move(*opened);
  }
  // Metrics listen before anything is allocated, so that a taken port is
  // reported first; a port is one rank's own problem, so every rank says so.
  std::unique_ptr<moe::TrainMetrics> metrics;
  if (settings->metrics_port > 0) {
    metrics = std::make_unique<moe::TrainMetrics>(moe::TrainMetricsOptions{
        world->rank(), world->size(), /*active_parameters=*/0, settings->mfu_peak_tflops});
    if (absl::Status s = metrics->Serve(settings->metrics_port); !s.ok()) {
      return Fail(kExitFailure, s);
    }
    if (lead && !log.has_value()) log.emplace();  // a log without a file, for the metrics
  }
  // A checkpoint or Hugging Face model that does not fit the flags is a
  // usage error, found before the trainer allocates anything.
  std::optional<moe::CheckpointSummary> resume;
  if (!settings->load.empty()) {
    absl::StatusOr<moe::CheckpointSummary> checked =
        moe::CheckCheckpointForRun(settings->load, settings->trainer);
    if (!checked.ok()) return Fail(kExitUsage, checked.status());
    resume = *checked;
  }
  if (!settings->init_from_hf.empty()) {
    if (absl::Status s = moe::CheckHfModelForRun(settings->init_from_hf, settings->trainer);
        !s.ok()) {
      return Fail(kExitUsage, s);
    }
  }
  absl::StatusOr<std::unique_ptr<moe::Trainer>> trainer =
      moe::Trainer::Create(settings->trainer, world);
  if (!trainer.ok()) return Fail(kExitUsage, trainer.status());
  double load_seconds = 0;
  if (resume.has_value()) {
    const auto load_start = std::chrono::steady_clock::now();
    if (absl::Status s = moe::LoadCheckpoint(settings->load, trainer->get()); !s.ok()) {
      return Fail(kExitFailure, s);
    }
    load_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  } else if (!settings->init_from_hf.empty()) {
    if (absl::Status s = moe::InitFromHf(settings->init_from_hf, trainer->get()); !s.ok()) {
      return Fail(kExitFailure, s);
    }
  }
  (*trainer)->SetStopFlag(&g_stop_requested);
  if (metrics != nullptr) {
    metrics->set_active_parameters((*trainer)->model().NumActiveParameters());
    (*trainer)->SetCheckpointCallback(
        [m = metrics.get()](double seconds) { m->ObserveCheckpointSave(seconds); });
    if (log.has_value()) {
      log->AddObserver([m = metrics.get()](const moe::StepStats& stats) {
        m->ObserveStep(stats);
        if (stats.comm_exposed_s > 0 || stats.comm_hidden_s > 0) {
          m->ObserveCommunication(stats.comm_exposed_s, stats.comm_hidden_s);
        }
        // Per-layer per-expert load (counts are exact integers held in doubles).
        if (!stats.expert_tokens.empty()) {
          auto counts = [](const std::vector<std::vector<double>>& values) {
            std::vector<std::vector<int64_t>> out;
            for (const std::vector<double>& layer : values) {
              out.emplace_back(layer.begin(), layer.end());
            }
            return out;
          };
          m->ObserveExperts(counts(stats.expert_tokens), counts(stats.expert_dropped));
        }
      });
    }
  }

  if (lead) {
    std::cout << "moe-train: " << omp_get_max_threads() << " threads per rank\n"
              << (*trainer)->Summary();
    if (log.has_value() && !log->path().empty()) {
      std::cout << "log       " << log->path() << " (one JSON object per step)\n";
    }
    if (resume.has_value()) {
      // Every file of the iteration, over the time this rank took to read its share.
      std::error_code error;
      double bytes = 0;
      for (const auto& entry : std::filesystem::directory_iterator(resume->dir, error)) {
        if (entry.is_regular_file(error)) bytes += static_cast<double>(entry.file_size(error));
      }
      std::cout << "resume    " << resume->dir << ": step " << resume->iteration << " (saved under "
                << resume->saved_under
                << (resume->has_optimizer_state ? ")" : "; weights only, fresh optimizer)")
                << absl::StrFormat("; loaded %.1f MB in %.2f s (%.2f GB/s)", bytes / 1e6,
                                   load_seconds,
                                   load_seconds > 0 ? bytes / load_seconds / 1e9 : 0.0)
                << "\n";
    } else if (!settings->init_from_hf.empty()) {
      std::cout << "init      Hugging Face weights from " << settings->init_from_hf << "\n";
    }
    if (!settings->trainer.save.empty()) {
      std::cout << "save      " << settings->trainer.save << ": every "
                << (settings->trainer.save_interval > 0
                        ? std::to_string(settings->trainer.save_interval) + " steps, "
                        : std::string())
                << "at the end and on SIGTERM/SIGINT; keeping "
                << (settings->trainer.save_keep > 0 ? std::to_string(settings->trainer.save_keep)
                                                    : std::string("all"))
                << "\n";
    }
    if (metrics != nullptr) {
      std::cout << "metrics   http://localhost:" << metrics->port()
                << "/metrics (Prometheus; rank r serves on port + r)\n";
    }
    std::cout << std::flush;
  }
  if (absl::Status s =
          (*trainer)->Train(log.has_value() ? &*log : nullptr, lead ? &std::cout : nullptr);
      !s.ok()) {
    return Fail(kExitFailure, s);
  }
  if (lead && (*trainer)->stopped_early() && !settings->trainer.save.empty()) {
    std::cout << "moe-train: resume with --load=" << settings->trainer.save << std::endl;
  }
  if (log.has_value() && !log->path().empty()) {
    std::cout << "moe-train: done; step log in " << log->path() << std::endl;
  }
  if (metrics != nullptr && settings->metrics_linger_s > 0) {
    // Lets Prometheus scrape the last step's values before the process ends.
    std::this_thread::sleep_for(std::chrono::duration<double>(settings->metrics_linger_s));
  }
  return 0;
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
#ifdef MOE_WITH_MPI
  if (StartedByMpiLauncher()) {
    moe::MpiEnvironment mpi(&argc, &argv);
    int code = 0;
    {
      std::unique_ptr<moe::MpiCommunicator> world = moe::MpiCommunicator::World();
      code = Run(world.get());
    }
    // One rank's bad flag is every rank's (same flags): all return together.
    // A rank that fails alone mid-run ends the job through mpirun's nonzero exit.
    return code;
  }
#else
  if (StartedByMpiLauncher()) {
    return Fail(kExitUsage, absl::FailedPreconditionError(
                                "started by an MPI launcher, but this build has no MPI; install "
                                "OpenMPI (libopenmpi-dev) and rebuild, or run without mpirun"));
  }
#endif
  moe::LocalCommunicator world;
  return Run(&world);
}
