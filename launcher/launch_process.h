// The two processes of moe-launch: the job (one per launch: it runs mpirun
// or srun, passes the ranks' output through, forwards signals and names the
// rank that failed) and the rank wrapper (one per rank, started by mpirun or
// srun around the program).
//
// Signals. A first SIGINT or SIGTERM to moe-launch reaches every rank as the
// same signal, so that a trainer can finish its step and save: moe-launch
// sends SIGUSR2 or SIGUSR1 to mpirun/srun, which forward those two to every
// task unchanged (they would kill the job on SIGTERM themselves), and each
// rank wrapper turns them back into SIGINT or SIGTERM for its program. A
// second signal ends the job at once (SIGTERM to mpirun/srun, which kills the
// ranks); a third kills mpirun/srun's process group.
//
// A failing rank. When a rank's program exits non-zero or is killed, its
// wrapper prints RankFailureLine on stderr and exits with the same code;
// mpirun (orte_abort_on_non_zero_status) or srun (--kill-on-bad-exit) then
// stops the other ranks. The job passes that line through, and when the
// launcher has ended it repeats which rank failed first, how, and where its
// log is, and exits with that rank's code. If the launcher has not ended
// kFailureGraceSeconds after the failure, the job kills it, so that a dead
// rank ends the job within a minute even when the others hang.
#ifndef MOE_LAUNCHER_LAUNCH_PROCESS_H_
#define MOE_LAUNCHER_LAUNCH_PROCESS_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "launcher/launch_plan.h"

namespace moe {

inline constexpr double kFailureGraceSeconds = 30;

// Cuts a byte stream into lines (without their '\n').
class LineSplitter {
 public:
  void Feed(std::string_view bytes, const std::function<void(std::string_view)>& emit);
  // The last line when it had no '\n'.
  void Flush(const std::function<void(std::string_view)>& emit);

 private:
  std::string pending_;
};

// The rank of this process as the launcher set it (OMPI_COMM_WORLD_RANK,
// PMIX_RANK, SLURM_PROCID or PMI_RANK), or -1.
int RankFromEnvironment();

// Rank-wrapper mode: runs `program` (argv, program[0] an absolute path) as a
// child, prefixes each line of its stdout and stderr with "[rank R] " onto
// this process's stdout and stderr, appends them unprefixed to
// log_dir/rank_R.log when log_dir is set, forwards signals as described
// above, and returns the code to exit with (the child's, or 128 + signal).
int RunRankWrapper(const std::vector<std::string>& program, const std::string& log_dir);

// Job mode: runs `command` and returns moe-launch's exit code: 0 when every
// rank succeeded, else the failed rank's code (or the launcher's own).
int RunJob(const LaunchCommand& command, const LaunchRequest& request);

}  // namespace moe

#endif  // MOE_LAUNCHER_LAUNCH_PROCESS_H_
