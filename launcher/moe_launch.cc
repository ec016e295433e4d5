// moe-launch: runs N ranks of a program on this machine, as torchrun does
// for PyTorch, through OpenMPI's mpirun (or srun inside a Slurm allocation).
//
//   build/bin/moe-launch -n 2 --log_dir=out/logs -- moe-train
//   --flagfile=examples/recipes/mixtral-tiny.flags
//
// Defaults (launcher/launch_plan.h): mpirun --oversubscribe when the ranks
// outnumber the cores, --allow-run-as-root as root, no core binding, and
// OMP_NUM_THREADS = cores / ranks unless set. Each output line is prefixed
// with "[rank R] "; --log_dir keeps one file per rank. SIGINT/SIGTERM go on to
// the ranks (a second one ends the job), and when a rank dies the job ends
// with that rank named (launcher/launch_process.h). The program is looked up
// in moe-launch's own directory first, then in PATH.
//
// Exit codes: 0 every rank succeeded; 2 a usage error (before anything
// starts); 127 the program or mpirun/srun cannot be run; otherwise the code
// of the rank that failed first (128 + signal for a killed rank).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "launcher/launch_plan.h"
#include "launcher/launch_process.h"

ABSL_FLAG(int32_t, n, 0, "Number of ranks to start (required), e.g. -n 2.");
ABSL_FLAG(std::string, log_dir, "",
          "Also write each rank's output (stdout and stderr) to DIR/rank_<r>.log, appending.");
ABSL_FLAG(std::string, mpirun, "mpirun", "The mpirun to start the ranks with outside Slurm.");
ABSL_FLAG(std::string, srun_mpi, "pmix",
          "srun --mpi= plugin inside a Slurm allocation (OpenMPI uses PMIx); ignored when "
          "SLURM_MPI_TYPE is set.");
ABSL_FLAG(bool, rank_wrapper, false,
          "Internal: the mode in which moe-launch runs around each rank under mpirun/srun.");

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitNotFound = 127;

constexpr const char* kUsage =
    "moe-launch -n N [--log_dir=DIR] -- PROGRAM [ARGS...]\n"
    "  e.g. moe-launch -n 2 --log_dir=out/logs -- moe-train "
    "--flagfile=examples/recipes/mixtral-tiny.flags";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "moe-launch: error: %s\nusage: %s\n", message.c_str(), kUsage);
  return kExitUsage;
}

// moe-launch's own path, so that the ranks run the same binary as wrappers.
std::string SelfPath(const char* argv0) {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) return self.string();
  return std::filesystem::absolute(argv0).string();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      absl::StrCat("runs N ranks of a program through mpirun (srun inside Slurm).\n  ", kUsage));
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "moe_launch");
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);

  // Only what comes before "--" is ours: the program's flags must not be
  // parsed (or rejected) as moe-launch's.
  moe::SplitCommandLine split = moe::SplitAtDoubleDash(argc, argv);
  const std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(split.launcher.size()), split.launcher.data());
  if (positional.size() > 1) {
    return UsageError(
        absl::StrCat("unexpected '", positional[1], "' before '--'",
                     split.has_separator ? "" : " (missing '--' before the program?)"));
  }
  if (!split.has_separator) {
    return UsageError("missing '--' before the program to run");
  }
  if (split.program.empty()) {
    return UsageError(
        "nothing after '--': give the program to run, e.g. -- moe-train --flagfile=F");
  }

  if (absl::GetFlag(FLAGS_rank_wrapper)) {
    return moe::RunRankWrapper(split.program, absl::GetFlag(FLAGS_log_dir));
  }

  const int num_ranks = absl::GetFlag(FLAGS_n);
  if (num_ranks < 1) {
    return UsageError(num_ranks == 0 ? "-n is required: the number of ranks, e.g. -n 2"
                                     : absl::StrCat("-n must be at least 1, got ", num_ranks));
  }
  const std::string self = SelfPath(argv[0]);
  const char* path = std::getenv("PATH");
  absl::StatusOr<std::string> program = moe::ResolveProgram(
      split.program[0], std::filesystem::path(self).parent_path().string(), path ? path : "");
  if (!program.ok()) {
    std::fprintf(stderr, "moe-launch: error: %s\n",
                 std::string(program.status().message()).c_str());
    return kExitNotFound;
  }

  moe::LaunchRequest request;
  request.num_ranks = num_ranks;
  request.log_dir = absl::GetFlag(FLAGS_log_dir);
  if (!request.log_dir.empty()) {
    request.log_dir = std::filesystem::absolute(request.log_dir).lexically_normal().string();
  }
  request.program = split.program;
  request.program[0] = *program;
  request.mpirun = absl::GetFlag(FLAGS_mpirun);
  request.srun_mpi = absl::GetFlag(FLAGS_srun_mpi);
  const moe::LaunchCommand command =
      moe::BuildLaunchCommand(request, moe::DetectLaunchHost(), self);
  return moe::RunJob(command, request);
}
