#include "launcher/launch_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace moe {

namespace {

using Clock = std::chrono::steady_clock;

// A signal handler can only write to a descriptor: the self-pipe trick turns
// signals into bytes the poll loop reads. One per process, set up once.
int g_signal_pipe_write = -1;

void OnSignal(int signal) {
  const int saved = errno;
  const auto byte = static_cast<unsigned char>(signal);
  [[maybe_unused]] const ssize_t written = write(g_signal_pipe_write, &byte, 1);
  errno = saved;
}

// Returns the read end of the signal pipe; `signals` are caught from now on.
int CatchSignals(std::initializer_list<int> signals) {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    std::perror("moe-launch: pipe2");
    std::exit(1);
  }
  g_signal_pipe_write = fds[1];
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int signal : signals) sigaction(signal, &action, nullptr);
  return fds[0];
}

void WriteAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the reader is gone: nothing better to do with output
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

struct Child {
  pid_t pid = -1;
  int out = -1;  // read ends of its stdout and stderr
  int err = -1;
};

struct SpawnOptions {
  bool new_process_group = false;  // the terminal's Ctrl-C reaches moe-launch alone
  bool stdin_null = false;
  bool die_with_parent = false;  // SIGKILL when this (single-threaded) process dies
  // Start the program with SIGUSR1 and SIGUSR2 ignored (it may install its
  // own handlers): mpirun signals a rank's whole process group and srun every
  // process of the step, so the relayed signals reach the program directly
  // too, where their default action would kill it.
  bool ignore_relay_signals = false;
};

// fork + execvp with stdout and stderr on pipes. Fails with exec's errno.
absl::StatusOr<Child> Spawn(const std::vector<std::string>& argv, const SpawnOptions& options) {
  int out[2];
  int err[2];
  int exec_error[2];  // close-on-exec: EOF means exec succeeded
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 ||
      pipe2(exec_error, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    if (options.new_process_group) setpgid(0, 0);
    if (options.die_with_parent) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(137);  // the parent died before prctl
    }
    if (options.stdin_null) {
      const int null = open("/dev/null", O_RDONLY);
      if (null >= 0) dup2(null, STDIN_FILENO);
    }
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    // The parent catches these; exec resets caught signals to their
    // defaults, but keeps ignored ones ignored.
    const auto relay = options.ignore_relay_signals ? SIG_IGN : SIG_DFL;
    signal(SIGUSR1, relay);
    signal(SIGUSR2, relay);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    const int error = errno;
    [[maybe_unused]] const ssize_t written = write(exec_error[1], &error, sizeof(error));
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  close(exec_error[1]);
  int error = 0;
  ssize_t n;
  do {
    n = read(exec_error[0], &error, sizeof(error));
  } while (n < 0 && errno == EINTR);
  close(exec_error[0]);
  if (n == sizeof(error)) {
    waitpid(pid, nullptr, 0);
    close(out[0]);
    close(err[0]);
    return absl::NotFoundError(absl::StrCat("cannot run ", argv[0], ": ", std::strerror(error)));
  }
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  return Child{pid, out[0], err[0]};
}

// Reads what `fd` has now into `splitter`; false at end of file.
bool ReadAvailable(int fd, LineSplitter* splitter,
                   const std::function<void(std::string_view)>& emit) {
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      splitter->Feed(std::string_view(buffer, static_cast<size_t>(n)), emit);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

// The output side of a child: its two pipes, split into lines.
class ChildOutput {
 public:
  ChildOutput(const Child& child, std::function<void(std::string_view)> on_out,
              std::function<void(std::string_view)> on_err)
      : fds_{child.out, child.err}, emit_{std::move(on_out), std::move(on_err)} {}

  // Polls the pipes and `extra` (may be -1) for up to timeout_ms; reads
  // whatever arrived. Returns whether `extra` is readable.
  bool Poll(int extra, int timeout_ms) {
    pollfd fds[3];
    int count = 0;
    int index[2] = {-1, -1};
    for (int i = 0; i < 2; ++i) {
      if (fds_[i] < 0) continue;
      index[i] = count;
      fds[count++] = {fds_[i], POLLIN, 0};
    }
    const int extra_index = count;
    if (extra >= 0) fds[count++] = {extra, POLLIN, 0};
    if (poll(fds, static_cast<nfds_t>(count), timeout_ms) <= 0) return false;
    for (int i = 0; i < 2; ++i) {
      if (index[i] < 0 || fds[index[i]].revents == 0) continue;
      if (!ReadAvailable(fds_[i], &splitters_[i], emit_[i])) {
        splitters_[i].Flush(emit_[i]);
        close(fds_[i]);
        fds_[i] = -1;
      }
    }
    return extra >= 0 && fds[extra_index].revents != 0;
  }

  bool open() const { return fds_[0] >= 0 || fds_[1] >= 0; }

  // After the child ended: reads until both pipes close, or for at most
  // `seconds` (a grandchild may hold them open), then flushes.
  void Drain(double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (open() && Clock::now() < end) Poll(-1, 100);
    for (int i = 0; i < 2; ++i) {
      splitters_[i].Flush(emit_[i]);
      if (fds_[i] >= 0) close(fds_[i]);
      fds_[i] = -1;
    }
  }

 private:
  int fds_[2];
  LineSplitter splitters_[2];
  std::function<void(std::string_view)> emit_[2];
};

std::vector<int> ReadSignals(int signal_pipe) {
  std::vector<int> signals;
  unsigned char bytes[64];
  ssize_t n;
  while ((n = read(signal_pipe, bytes, sizeof(bytes))) > 0) {
    for (ssize_t i = 0; i < n; ++i) signals.push_back(bytes[i]);
  }
  return signals;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

void LineSplitter::Feed(std::string_view bytes, const std::function<void(std::string_view)>& emit) {
  size_t newline;
  while ((newline = bytes.find('\n')) != std::string_view::npos) {
    if (pending_.empty()) {
      emit(bytes.substr(0, newline));
    } else {
      pending_.append(bytes.substr(0, newline));
      emit(pending_);
      pending_.clear();
    }
    bytes.remove_prefix(newline + 1);
  }
  pending_.append(bytes);
}

void LineSplitter::Flush(const std::function<void(std::string_view)>& emit) {
  if (pending_.empty()) return;
  emit(pending_);
  pending_.clear();
}

int RankFromEnvironment() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "PMI_RANK"}) {
    const char* value = std::getenv(name);
    int rank = 0;
    if (value != nullptr && absl::SimpleAtoi(value, &rank) && rank >= 0) return rank;
  }
  return -1;
}

int RunRankWrapper(const std::vector<std::string>& program, const std::string& log_dir) {
  const int rank = RankFromEnvironment();
  if (rank < 0) {
    std::fprintf(stderr,
                 "moe-launch: --rank_wrapper found no rank in the environment "
                 "(OMPI_COMM_WORLD_RANK, PMIX_RANK, SLURM_PROCID); it is moe-launch's own mode "
                 "under mpirun or srun: run moe-launch -n N -- PROGRAM instead\n");
    return 2;
  }
  const std::string host = HostName();
  std::FILE* log = nullptr;
  if (!log_dir.empty()) {
    const std::string path = absl::StrCat(log_dir, "/rank_", rank, ".log");
    std::error_code error;
    std::filesystem::create_directories(log_dir, error);
    log = std::fopen(path.c_str(), "a");
    if (log == nullptr) {
      std::fprintf(stderr, "moe-launch: rank %d: cannot open %s for appending (%s)\n", rank,
                   path.c_str(), std::strerror(errno));
      return 2;
    }
  }
  const int signals = CatchSignals({SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGCHLD});
  const pid_t parent = getppid();
  absl::StatusOr<Child> child = Spawn(program, SpawnOptions{.new_process_group = false,
                                                            .stdin_null = false,
                                                            .die_with_parent = true,
                                                            .ignore_relay_signals = true});
  if (!child.ok()) {
    std::fprintf(stderr, "moe-launch: rank %d: %s\n", rank,
                 std::string(child.status().message()).c_str());
    return 127;
  }
  if (log != nullptr) {
    std::fprintf(log, "moe-launch: rank %d: pid %d on %s: %s\n", rank, child->pid, host.c_str(),
                 absl::StrJoin(program, " ").c_str());
    std::fflush(log);
  }
  const std::string prefix = absl::StrCat("[rank ", rank, "] ");
  auto emitter = [&](int fd) {
    return [&, fd](std::string_view line) {
      WriteAll(fd, prefix + std::string(line) + "\n");
      if (log != nullptr) {
        std::fwrite(line.data(), 1, line.size(), log);
        std::fputc('\n', log);
        std::fflush(log);
      }
    };
  };
  ChildOutput output(*child, emitter(STDOUT_FILENO), emitter(STDERR_FILENO));

  std::optional<int> status;
  bool stopped = false;  // the launcher asked the rank to stop: not a failure
  // After mpirun/srun's own SIGTERM: when to stop waiting for the program.
  bool kill_pending = false;
  Clock::time_point kill_at{};
  while (!status.has_value()) {
    if (output.Poll(signals, 1000)) {
      for (int signal : ReadSignals(signals)) {
        if (signal == SIGCHLD) continue;
        if (signal == SIGUSR1 || signal == SIGUSR2) {
          // moe-launch's first SIGTERM/SIGINT, relayed: let the program
          // finish its step (no deadline: a checkpoint may take long).
          stopped = true;
          kill(child->pid, signal == SIGUSR1 ? SIGTERM : SIGINT);
        } else if (!kill_pending) {
          // mpirun/srun ending the job (another rank failed, or a second
          // signal): ask, then insist.
          stopped = true;
          kill(child->pid, SIGTERM);
          kill_pending = true;
          kill_at = Clock::now() + std::chrono::seconds(10);
        } else {
          kill(child->pid, SIGKILL);
        }
      }
    }
    int wait_status = 0;
    if (waitpid(child->pid, &wait_status, WNOHANG) == child->pid) status = wait_status;
    if (!status.has_value() && (getppid() != parent || (kill_pending && Clock::now() > kill_at))) {
      kill(child->pid, SIGKILL);  // the launcher is gone, or the program ignored SIGTERM
      kill_pending = false;
    }
  }
  // mpirun and srun signal the program and its wrapper alike; the
  // program's death can be seen first. A stop request arriving just after
  // still means the rank was stopped, not that it failed.
  if (!stopped && WIFSIGNALED(*status) &&
      (WTERMSIG(*status) == SIGTERM || WTERMSIG(*status) == SIGINT)) {
    pollfd fd = {signals, POLLIN, 0};
    if (poll(&fd, 1, 500) > 0) {
      for (int signal : ReadSignals(signals)) stopped = stopped || signal != SIGCHLD;
    }
  }
  output.Drain(2.0);
  const int code = ExitCodeOf(*status);
  if (code != 0) {
    const std::string line =
        stopped ? absl::StrCat("moe-launch: rank ", rank, " stopped: pid ", child->pid, " on ",
                               host, " ", DescribeWaitStatus(*status), " after moe-launch or ",
                               "the launcher asked it to stop")
                : RankFailureLine(rank, child->pid, host, *status);
    WriteAll(STDERR_FILENO, line + "\n");
    if (log != nullptr) std::fprintf(log, "%s\n", line.c_str());
  }
  if (log != nullptr) std::fclose(log);
  return code;
}

int RunJob(const LaunchCommand& command, const LaunchRequest& request) {
  for (const auto& [name, value] : command.env) setenv(name.c_str(), value.c_str(), 1);
  if (!request.log_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(request.log_dir, error);
    if (error) {
      std::fprintf(stderr, "moe-launch: --log_dir=%s: cannot create it (%s)\n",
                   request.log_dir.c_str(), error.message().c_str());
      return 2;
    }
  }
  std::string header =
      absl::StrCat("moe-launch: ", request.num_ranks, " ranks through ", command.launcher_name,
                   ", OMP_NUM_THREADS=", command.threads_per_rank, " per rank");
  if (command.oversubscribed) absl::StrAppend(&header, " (more ranks than cores)");
  if (!request.log_dir.empty()) {
    absl::StrAppend(&header, "; logs in ", request.log_dir, "/rank_<r>.log");
  }
  WriteAll(STDOUT_FILENO, header + "\n");

  const int signals = CatchSignals({SIGINT, SIGTERM, SIGHUP, SIGCHLD});
  absl::StatusOr<Child> child = Spawn(command.argv, SpawnOptions{.new_process_group = true,
                                                                 .stdin_null = true,
                                                                 .die_with_parent = false,
                                                                 .ignore_relay_signals = false});
  if (!child.ok()) {
    std::fprintf(stderr, "moe-launch: %s; %s\n", std::string(child.status().message()).c_str(),
                 command.launcher_name == "mpirun"
                     ? "install OpenMPI (Debian: openmpi-bin; scripts/install-deps.sh does)"
                     : "srun comes with Slurm (Debian: slurm-client)");
    return 127;
  }

  std::optional<RankFailure> failure;
  Clock::time_point failed_at{};
  auto watch = [&](std::string_view line) {
    if (failure.has_value()) return;
    const std::string text(line);
    failure = ParseRankFailureLine(text);
    if (!failure.has_value()) failure = ParseMpirunFailureLine(text);
    if (failure.has_value()) failed_at = Clock::now();
  };
  ChildOutput output(
      *child,
      [&](std::string_view line) {
        WriteAll(STDOUT_FILENO, std::string(line) + "\n");
        watch(line);
      },
      [&](std::string_view line) {
        WriteAll(STDERR_FILENO, std::string(line) + "\n");
        watch(line);
      });

  std::optional<int> status;
  int stop_requests = 0;
  bool killed_for_failure = false;
  while (!status.has_value()) {
    if (output.Poll(signals, 500)) {
      for (int signal : ReadSignals(signals)) {
        if (signal == SIGCHLD) continue;
        ++stop_requests;
        const char* name = signal == SIGINT ? "SIGINT" : "SIGTERM";
        if (stop_requests == 1) {
          WriteAll(STDERR_FILENO, absl::StrCat("moe-launch: ", name,
                                               ": passing it to every rank (send it again "
                                               "to stop them at once)\n"));
          kill(child->pid, signal == SIGINT ? SIGUSR2 : SIGUSR1);
        } else if (stop_requests == 2) {
          WriteAll(STDERR_FILENO, absl::StrCat("moe-launch: ", name, " again: ending the job\n"));
          kill(child->pid, SIGTERM);
        } else {
          kill(-child->pid, SIGKILL);
        }
      }
    }
    int wait_status = 0;
    if (waitpid(child->pid, &wait_status, WNOHANG) == child->pid) status = wait_status;
    if (!status.has_value() && failure.has_value() && !killed_for_failure &&
        SecondsSince(failed_at) > kFailureGraceSeconds) {
      WriteAll(STDERR_FILENO,
               absl::StrCat("moe-launch: ", command.launcher_name, " has not ended the job ",
                            kFailureGraceSeconds, " s after rank ", failure->rank,
                            " failed; killing it\n"));
      kill(-child->pid, SIGKILL);
      killed_for_failure = true;
    }
  }
  output.Drain(2.0);

  if (failure.has_value()) {
    std::string message = absl::StrCat("moe-launch: rank ", failure->rank, " failed first (",
                                       failure->description, "); the job was ended");
    if (!request.log_dir.empty()) {
      absl::StrAppend(&message, "; its log: ", request.log_dir, "/rank_", failure->rank, ".log");
    }
    WriteAll(STDERR_FILENO, message + "\n");
    return failure->exit_code != 0 ? failure->exit_code : 1;
  }
  const int code = ExitCodeOf(*status);
  if (code != 0) {
    WriteAll(STDERR_FILENO,
             absl::StrCat("moe-launch: ", command.launcher_name, " ", DescribeWaitStatus(*status),
                          stop_requests > 0 ? " after the job was asked to stop" : "", "\n"));
  }
  return code;
}

}  // namespace moe
