// What moe-launch runs, decided before anything starts: the command line
// split at "--", the program found on disk, and the mpirun or srun command
// that starts the ranks. Pure functions of their inputs (the environment is
// read once into LaunchHost), so that tests check every decision directly.
//
//   moe-launch -n 2 --log_dir=logs -- moe-train --flagfile=F
//   -> OMP_NUM_THREADS=1 mpirun -n 2 --bind-to none --allow-run-as-root -x OMP_NUM_THREADS
//        /abs/moe-launch --rank_wrapper --log_dir=logs -- /abs/moe-train --flagfile=F
//
// Every rank runs under moe-launch itself in rank-wrapper mode
// (launch_process.h): it prefixes the rank's output, writes its log file,
// turns the forwarded signal back into SIGTERM/SIGINT and reports how the
// rank ended, the same way under mpirun and under srun.
#ifndef MOE_LAUNCHER_LAUNCH_PLAN_H_
#define MOE_LAUNCHER_LAUNCH_PLAN_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// The command line cut at the first "--".
struct SplitCommandLine {
  std::vector<char*> launcher;       // argv[0] and moe-launch's own flags
  std::vector<std::string> program;  // what follows "--" (may be empty)
  bool has_separator = false;
};
SplitCommandLine SplitAtDoubleDash(int argc, char** argv);

// What moe-launch knows about the machine and the environment it runs in.
struct LaunchHost {
  int cores = 1;                    // CPUs this process may run on (affinity mask)
  bool root = false;                // mpirun refuses root without --allow-run-as-root
  bool in_slurm = false;            // SLURM_JOB_ID set: start the ranks with srun
  int slurm_nodes = 1;              // SLURM_JOB_NUM_NODES
  int slurm_tasks = 0;              // SLURM_NTASKS (0: not set)
  bool slurm_mpi_type_set = false;  // SLURM_MPI_TYPE set: srun picks the MPI plugin itself
  std::optional<std::string> omp_num_threads;  // OMP_NUM_THREADS as set by the user
};
LaunchHost DetectLaunchHost();

struct LaunchRequest {
  int num_ranks = 0;
  std::string log_dir;               // empty: no per-rank log files
  std::vector<std::string> program;  // resolved program path, then its arguments
  std::string mpirun = "mpirun";
  std::string srun = "srun";
  std::string srun_mpi = "pmix";  // srun --mpi=, unless SLURM_MPI_TYPE is set
};

struct LaunchCommand {
  std::string launcher_name;      // "mpirun" or "srun", for messages
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  // Set in moe-launch's environment before the launcher starts (inherited
  // by every rank).
  std::vector<std::pair<std::string, std::string>> env;
  int threads_per_rank = 0;     // the OMP_NUM_THREADS the ranks get
  bool oversubscribed = false;  // more ranks than cores on a node
};

// OpenMP threads per rank when the user set none: the cores shared by the
// ranks of one node, at least 1.
int ThreadsPerRank(int cores, int ranks_per_node);

// The mpirun command (or srun inside a Slurm allocation) that starts
// request.num_ranks copies of `self` (moe-launch's absolute path) in
// rank-wrapper mode around the program.
LaunchCommand BuildLaunchCommand(const LaunchRequest& request, const LaunchHost& host,
                                 const std::string& self);

// `name` as a path to an executable file: a name with a '/' as it is,
// otherwise the first match in `self_dir` (moe-launch's own directory, so
// that build/bin/moe-launch finds build/bin/moe-train) and then in `path`
// (colon-separated, as $PATH). The result is absolute. The error says where
// it looked.
absl::StatusOr<std::string> ResolveProgram(const std::string& name, const std::string& self_dir,
                                           const std::string& path);

// How a process ended, from its waitpid() status: "exited with code 3",
// "was killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int wait_status);
// The exit code that reports it onward: the code, or 128 + the signal.
int ExitCodeOf(int wait_status);

// The line a rank wrapper prints on stderr when its rank ended by itself
// with a failure, and its parser (the top-level moe-launch reads the ranks'
// stderr for it, so that it works across nodes under srun too). A rank that
// moe-launch stopped is not a failure and prints a different line.
std::string RankFailureLine(int rank, int pid, const std::string& host, int wait_status);
struct RankFailure {
  int rank = -1;
  std::string description;  // "pid 123 on node1, was killed by signal 9 (Killed)"
  int exit_code = 1;        // ExitCodeOf the rank's status
};
std::optional<RankFailure> ParseRankFailureLine(const std::string& line);
// mpirun's own report of a rank that died under it (when the wrapper itself
// was killed): "mpirun noticed that process rank 1 with PID 0 on node vm
// exited on signal 9 (Killed)."
std::optional<RankFailure> ParseMpirunFailureLine(const std::string& line);

}  // namespace moe

#endif  // MOE_LAUNCHER_LAUNCH_PLAN_H_
