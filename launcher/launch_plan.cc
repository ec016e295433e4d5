#include "launcher/launch_plan.h"

#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace moe {

namespace {

int EnvInt(const char* name, int fallback) {
  const char* value = std::getenv(name);
  int parsed = 0;
  return value != nullptr && absl::SimpleAtoi(value, &parsed) && parsed > 0 ? parsed : fallback;
}

bool IsExecutableFile(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(path.c_str(), X_OK) == 0;
}

}  // namespace

SplitCommandLine SplitAtDoubleDash(int argc, char** argv) {
  SplitCommandLine split;
  int i = 0;
  for (; i < argc; ++i) {
    if (i > 0 && std::strcmp(argv[i], "--") == 0) {
      split.has_separator = true;
      break;
    }
    split.launcher.push_back(argv[i]);
  }
  for (++i; i < argc; ++i) split.program.emplace_back(argv[i]);
  return split;
}

LaunchHost DetectLaunchHost() {
  LaunchHost host;
  cpu_set_t set;
  CPU_ZERO(&set);
  host.cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
  if (host.cores <= 0) host.cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (host.cores <= 0) host.cores = 1;
  host.root = geteuid() == 0;
  host.in_slurm = std::getenv("SLURM_JOB_ID") != nullptr;
  host.slurm_nodes = EnvInt("SLURM_JOB_NUM_NODES", EnvInt("SLURM_NNODES", 1));
  host.slurm_tasks = EnvInt("SLURM_NTASKS", 0);
  host.slurm_mpi_type_set = std::getenv("SLURM_MPI_TYPE") != nullptr;
  if (const char* threads = std::getenv("OMP_NUM_THREADS"); threads != nullptr && *threads) {
    host.omp_num_threads = threads;
  }
  return host;
}

int ThreadsPerRank(int cores, int ranks_per_node) {
  if (ranks_per_node < 1) ranks_per_node = 1;
  return std::max(1, cores / ranks_per_node);
}

LaunchCommand BuildLaunchCommand(const LaunchRequest& request, const LaunchHost& host,
                                 const std::string& self) {
  LaunchCommand command;
  const int nodes = host.in_slurm ? std::max(1, host.slurm_nodes) : 1;
  const int ranks_per_node = (request.num_ranks + nodes - 1) / nodes;
  command.oversubscribed = ranks_per_node > host.cores;
  if (host.omp_num_threads.has_value()) {
    int threads = 0;
    command.threads_per_rank = absl::SimpleAtoi(*host.omp_num_threads, &threads) ? threads : 0;
  } else {
    command.threads_per_rank = ThreadsPerRank(host.cores, ranks_per_node);
    command.env.emplace_back("OMP_NUM_THREADS", std::to_string(command.threads_per_rank));
  }

  std::vector<std::string>& argv = command.argv;
  if (host.in_slurm) {
    command.launcher_name = "srun";
    argv = {request.srun, absl::StrCat("--ntasks=", request.num_ranks),
            // One task's failure ends the step (the others are killed).
            "--kill-on-bad-exit=1"};
    if (!host.slurm_mpi_type_set) argv.push_back(absl::StrCat("--mpi=", request.srun_mpi));
    // More tasks than the allocation holds: Slurm refuses unless told to share.
    if (host.slurm_tasks > 0 && request.num_ranks > host.slurm_tasks) {
      argv.emplace_back("--overcommit");
    }
  } else {
    command.launcher_name = "mpirun";
    argv = {request.mpirun, "-n", std::to_string(request.num_ranks),
            // OpenMPI binds each rank to one core by default for 2 ranks or
            // fewer, which would pin a rank's OpenMP threads to one core.
            "--bind-to", "none"};
    if (command.oversubscribed) argv.emplace_back("--oversubscribe");
    if (host.root) argv.emplace_back("--allow-run-as-root");
    argv.insert(argv.end(), {"-x", "OMP_NUM_THREADS"});
  }
  argv.push_back(self);
  argv.emplace_back("--rank_wrapper");
  if (!request.log_dir.empty()) argv.push_back(absl::StrCat("--log_dir=", request.log_dir));
  argv.emplace_back("--");
  argv.insert(argv.end(), request.program.begin(), request.program.end());
  return command;
}

absl::StatusOr<std::string> ResolveProgram(const std::string& name, const std::string& self_dir,
                                           const std::string& path) {
  namespace fs = std::filesystem;
  if (name.empty()) {
    return absl::InvalidArgumentError(
        "nothing after '--': give the program to run, e.g. -- moe-train --flagfile=F");
  }
  if (name.find('/') != std::string::npos) {
    if (!IsExecutableFile(name)) {
      return absl::NotFoundError(
          absl::StrCat("program '", name, "' is not an executable file; check the path"));
    }
    return fs::absolute(name).lexically_normal().string();
  }
  std::vector<std::string> dirs;
  if (!self_dir.empty()) dirs.push_back(self_dir);
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    dirs.emplace_back(dir);
  }
  for (const std::string& dir : dirs) {
    const std::string candidate = (fs::path(dir) / name).string();
    if (IsExecutableFile(candidate)) return fs::absolute(candidate).lexically_normal().string();
  }
  return absl::NotFoundError(
      absl::StrCat("program '", name, "' not found in moe-launch's directory (", self_dir,
                   ") nor in PATH (", path, "); give its path, e.g. build/bin/", name));
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int signal = WTERMSIG(wait_status);
    return absl::StrCat("was killed by signal ", signal, " (", strsignal(signal), ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

std::string RankFailureLine(int rank, int pid, const std::string& host, int wait_status) {
  return absl::StrCat("moe-launch: rank ", rank, " failed: pid ", pid, " on ", host, " ",
                      DescribeWaitStatus(wait_status));
}

std::optional<RankFailure> ParseRankFailureLine(const std::string& line) {
  // Cheap test first: this runs on every line the ranks print.
  if (line.find("moe-launch: rank ") == std::string::npos) return std::nullopt;
  static const std::regex pattern(
      R"(moe-launch: rank (\d+) failed: (pid \d+ on \S+ (exited with code (\d+)|was killed by signal (\d+).*)))");
  std::smatch match;
  if (!std::regex_search(line, match, pattern)) return std::nullopt;
  RankFailure failure;
  failure.rank = std::stoi(match[1]);
  failure.description = match[2];
  failure.exit_code = match[4].matched ? std::stoi(match[4]) : 128 + std::stoi(match[5]);
  return failure;
}

std::optional<RankFailure> ParseMpirunFailureLine(const std::string& line) {
  if (line.find("mpirun noticed that process rank") == std::string::npos) return std::nullopt;
  static const std::regex pattern(
      R"(process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)( \(([^)]*)\))?)");
  std::smatch match;
  if (!std::regex_search(line, match, pattern)) return std::nullopt;
  RankFailure failure;
  failure.rank = std::stoi(match[1]);
  const int signal = std::stoi(match[3]);
  failure.description = absl::StrCat("on ", match[2].str(), " was killed by signal ", signal, " (",
                                     strsignal(signal), ")");
  failure.exit_code = 128 + signal;
  return failure;
}

}  // namespace moe
