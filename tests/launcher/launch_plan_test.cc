// moe-launch's decisions, checked directly: the command line split at "--",
// the mpirun and srun commands for each kind of host, threads per rank,
// where the program is found, how a rank's end is described, and the
// failure lines that the job reads from the ranks and from mpirun.
#include "launcher/launch_plan.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "launcher/launch_process.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

bool Has(const std::vector<std::string>& argv, const std::string& arg) {
  return std::find(argv.begin(), argv.end(), arg) != argv.end();
}

LaunchRequest Request(int ranks) {
  LaunchRequest request;
  request.num_ranks = ranks;
  request.program = {"/bin/moe-train", "--flagfile=f"};
  return request;
}

TEST(LaunchPlanTest, SplitsAtTheFirstDoubleDash) {
  std::vector<std::string> args = {"moe-launch", "-n", "2", "--", "prog", "--x", "--", "y"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  const SplitCommandLine split = SplitAtDoubleDash(static_cast<int>(argv.size()), argv.data());
  EXPECT_TRUE(split.has_separator);
  ASSERT_EQ(split.launcher.size(), 3u);
  EXPECT_EQ(split.program, (std::vector<std::string>{"prog", "--x", "--", "y"}));

  std::vector<std::string> none = {"moe-launch", "-n", "2", "prog"};
  std::vector<char*> none_argv;
  for (std::string& a : none) none_argv.push_back(a.data());
  EXPECT_FALSE(SplitAtDoubleDash(4, none_argv.data()).has_separator);
}

TEST(LaunchPlanTest, ThreadsShareTheCoresOfANode) {
  EXPECT_EQ(ThreadsPerRank(16, 4), 4);
  EXPECT_EQ(ThreadsPerRank(2, 2), 1);
  EXPECT_EQ(ThreadsPerRank(2, 8), 1);  // oversubscribed: never 0
  EXPECT_EQ(ThreadsPerRank(3, 2), 1);
  EXPECT_EQ(ThreadsPerRank(8, 0), 8);
}

TEST(LaunchPlanTest, MpirunCommandOnALocalMachine) {
  LaunchHost host;
  host.cores = 2;
  host.root = true;
  const LaunchCommand command = BuildLaunchCommand(Request(4), host, "/b/moe-launch");
  EXPECT_EQ(command.launcher_name, "mpirun");
  const std::vector<std::string> want_prefix = {"mpirun", "-n", "4", "--bind-to", "none"};
  ASSERT_GE(command.argv.size(), want_prefix.size());
  EXPECT_TRUE(std::equal(want_prefix.begin(), want_prefix.end(), command.argv.begin()));
  EXPECT_TRUE(Has(command.argv, "--oversubscribe"));
  EXPECT_TRUE(Has(command.argv, "--allow-run-as-root"));
  EXPECT_TRUE(command.oversubscribed);
  EXPECT_EQ(command.threads_per_rank, 1);
  ASSERT_EQ(command.env.size(), 1u);
  EXPECT_EQ(command.env[0], (std::pair<std::string, std::string>{"OMP_NUM_THREADS", "1"}));
  // The ranks run moe-launch's wrapper around the program, its flags intact.
  const std::vector<std::string> tail = {"/b/moe-launch", "--rank_wrapper", "--", "/bin/moe-train",
                                         "--flagfile=f"};
  EXPECT_TRUE(std::equal(tail.rbegin(), tail.rend(), command.argv.rbegin()));
}

TEST(LaunchPlanTest, NoOversubscribeNorRootFlagWhenNotNeeded) {
  LaunchHost host;
  host.cores = 16;
  LaunchRequest request = Request(4);
  request.log_dir = "/logs";
  const LaunchCommand command = BuildLaunchCommand(request, host, "/b/moe-launch");
  EXPECT_FALSE(Has(command.argv, "--oversubscribe"));
  EXPECT_FALSE(Has(command.argv, "--allow-run-as-root"));
  EXPECT_EQ(command.threads_per_rank, 4);
  EXPECT_TRUE(Has(command.argv, "--log_dir=/logs"));
}

TEST(LaunchPlanTest, KeepsTheUsersOmpNumThreads) {
  LaunchHost host;
  host.cores = 16;
  host.omp_num_threads = "3";
  const LaunchCommand command = BuildLaunchCommand(Request(2), host, "/b/moe-launch");
  EXPECT_TRUE(command.env.empty());
  EXPECT_EQ(command.threads_per_rank, 3);
}

TEST(LaunchPlanTest, SrunInsideASlurmAllocation) {
  LaunchHost host;
  host.cores = 8;
  host.in_slurm = true;
  host.slurm_nodes = 2;
  host.slurm_tasks = 8;
  const LaunchCommand command = BuildLaunchCommand(Request(8), host, "/b/moe-launch");
  EXPECT_EQ(command.launcher_name, "srun");
  EXPECT_EQ(command.argv[0], "srun");
  EXPECT_TRUE(Has(command.argv, "--ntasks=8"));
  EXPECT_TRUE(Has(command.argv, "--kill-on-bad-exit=1"));
  EXPECT_TRUE(Has(command.argv, "--mpi=pmix"));
  EXPECT_FALSE(Has(command.argv, "--overcommit"));
  EXPECT_EQ(command.threads_per_rank, 2);  // 8 cores per node, 4 ranks per node

  host.slurm_mpi_type_set = true;  // srun reads SLURM_MPI_TYPE itself
  host.slurm_tasks = 4;
  const LaunchCommand more = BuildLaunchCommand(Request(8), host, "/b/moe-launch");
  EXPECT_FALSE(Has(more.argv, "--mpi=pmix"));
  EXPECT_TRUE(Has(more.argv, "--overcommit"));
}

TEST(LaunchPlanTest, ResolvesProgramsAndSaysWhereItLooked) {
  const std::string dir = testing::MakeTestDir("launch_plan");
  const std::string program = dir + "/my-prog";
  std::ofstream(program) << "#!/bin/sh\n";
  chmod(program.c_str(), 0755);
  std::ofstream(dir + "/not-exec") << "x";

  absl::StatusOr<std::string> found = ResolveProgram("my-prog", dir, "/usr/bin");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, program);
  absl::StatusOr<std::string> in_path =
      ResolveProgram("my-prog", "/nonexistent", "/usr/bin:" + dir);
  ASSERT_TRUE(in_path.ok()) << in_path.status();
  EXPECT_EQ(*in_path, program);
  EXPECT_TRUE(ResolveProgram(program, "", "").ok());

  absl::StatusOr<std::string> missing = ResolveProgram("no-such-prog", dir, "/usr/bin");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("not found in moe-launch's directory"),
            std::string::npos);
  EXPECT_NE(missing.status().message().find("/usr/bin"), std::string::npos);
  EXPECT_FALSE(ResolveProgram(dir + "/not-exec", "", "").ok());
  EXPECT_FALSE(ResolveProgram("not-exec", dir, "").ok());
}

TEST(LaunchPlanTest, DescribesHowAProcessEnded) {
  EXPECT_EQ(DescribeWaitStatus(3 << 8), "exited with code 3");
  EXPECT_EQ(ExitCodeOf(3 << 8), 3);
  EXPECT_EQ(DescribeWaitStatus(SIGKILL), "was killed by signal 9 (Killed)");
  EXPECT_EQ(ExitCodeOf(SIGKILL), 137);
}

TEST(LaunchPlanTest, FailureLinesRoundTrip) {
  const std::string killed = RankFailureLine(2, 1234, "node7", SIGKILL);
  EXPECT_EQ(killed, "moe-launch: rank 2 failed: pid 1234 on node7 was killed by signal 9 (Killed)");
  // As the job sees it: possibly after another tool's prefix.
  std::optional<RankFailure> parsed = ParseRankFailureLine("srun: " + killed);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->rank, 2);
  EXPECT_EQ(parsed->exit_code, 137);
  EXPECT_EQ(parsed->description, "pid 1234 on node7 was killed by signal 9 (Killed)");

  std::optional<RankFailure> exited = ParseRankFailureLine(RankFailureLine(11, 5, "h", 4 << 8));
  ASSERT_TRUE(exited.has_value());
  EXPECT_EQ(exited->rank, 11);
  EXPECT_EQ(exited->exit_code, 4);

  EXPECT_FALSE(ParseRankFailureLine("[rank 0] step 1/5 | loss 5.5").has_value());
  EXPECT_FALSE(ParseRankFailureLine("moe-launch: rank 1 stopped: pid 5 on h exited with code 143")
                   .has_value());
}

TEST(LaunchPlanTest, ReadsMpirunsOwnReport) {
  std::optional<RankFailure> failure = ParseMpirunFailureLine(
      "mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 9 (Killed).");
  ASSERT_TRUE(failure.has_value());
  EXPECT_EQ(failure->rank, 1);
  EXPECT_EQ(failure->exit_code, 137);
  EXPECT_FALSE(ParseMpirunFailureLine("mpirun: Forwarding signal 10 to job").has_value());
}

TEST(LaunchPlanTest, LineSplitterJoinsPiecesAndKeepsTheLastPartialLine) {
  LineSplitter splitter;
  std::vector<std::string> lines;
  auto emit = [&](std::string_view line) { lines.emplace_back(line); };
  splitter.Feed("ab", emit);
  splitter.Feed("c\nd\n\ne", emit);
  EXPECT_EQ(lines, (std::vector<std::string>{"abc", "d", ""}));
  splitter.Feed("f", emit);
  splitter.Flush(emit);
  EXPECT_EQ(lines.back(), "ef");
  splitter.Flush(emit);
  EXPECT_EQ(lines.size(), 4u);
}

}  // namespace
}  // namespace moe
