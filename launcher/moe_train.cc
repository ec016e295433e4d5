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
// data, an unwritable log). Abseil reports unknown flags and unparsable
// values itself.
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "launcher/step_log.h"
#include "launcher/train_flags.h"
#include "launcher/trainer.h"
#include "parallel/local_communicator.h"
#ifdef MOE_WITH_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

int g_rank = 0;

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
  absl::StatusOr<std::unique_ptr<moe::Trainer>> trainer =
      moe::Trainer::Create(settings->trainer, world);
  if (!trainer.ok()) return Fail(kExitUsage, trainer.status());

  if (lead) {
    std::cout << "moe-train: " << omp_get_max_threads() << " threads per rank\n"
              << (*trainer)->Summary();
    if (log.has_value()) {
      std::cout << "log       " << log->path() << " (one JSON object per step)\n";
    }
    std::cout << std::flush;
  }
  if (absl::Status s =
          (*trainer)->Train(log.has_value() ? &*log : nullptr, lead ? &std::cout : nullptr);
      !s.ok()) {
    return Fail(kExitFailure, s);
  }
  if (log.has_value()) std::cout << "moe-train: done; step log in " << log->path() << std::endl;
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
