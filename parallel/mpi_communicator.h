// MpiCommunicator: Communicator over OpenMPI's non-blocking collectives
// (MPI_Iallreduce, MPI_Ireduce_scatter_block, MPI_Iallgather, MPI_Ialltoallv,
// MPI_Isend/Irecv, MPI_Ibcast, MPI_Ibarrier) on CPU tensors, on its own
// duplicate of the MPI communicator so that its traffic never matches anyone
// else's.
//
// Progress. OpenMPI's non-blocking collectives (libnbc) advance only inside
// MPI calls: issued and left alone, an all-reduce does nothing until Wait().
// So that it runs while the caller computes, a progress thread (one per
// World() and the communicators split from it) calls MPI_Test on every
// outstanding operation, sleeping poll_interval_us between rounds; it sleeps
// on a condition variable while nothing is outstanding. That needs
// MPI_THREAD_MULTIPLE (OpenMPI 4.1 provides it). Without it, kAuto falls back
// to kCallerPolls and says so once on stderr: then a compute loop overlaps
// communication by calling Progress() between chunks. bench/collectives
// measures the fraction hidden in each mode (docs/BENCHMARKS.md).
//
// Errors. The duplicate communicator returns MPI errors instead of aborting
// inside MPI; every call checks them and fails with MPI's error string and the
// operation. Wait() fails after wait_timeout_s with the operation's name
// instead of hanging (ranks that issued collectives in different orders, or a
// peer that stopped). mpirun ends the job when any rank aborts.
#ifndef MOE_PARALLEL_MPI_COMMUNICATOR_H_
#define MOE_PARALLEL_MPI_COMMUNICATOR_H_

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// Initialises MPI (asking for MPI_THREAD_MULTIPLE) for the life of the object
// and finalises it at the end; one per process, in main().
class MpiEnvironment {
 public:
  MpiEnvironment(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

  // The thread level MPI granted is MPI_THREAD_MULTIPLE.
  bool thread_multiple() const { return thread_multiple_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

 private:
  bool thread_multiple_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
};

struct MpiCommunicatorOptions {
  enum class Progress {
    kAuto,         // a progress thread when MPI allows it, else kCallerPolls (with a message)
    kThread,       // a progress thread; fails if MPI lacks MPI_THREAD_MULTIPLE
    kCallerPolls,  // no thread: operations advance in Test(), Wait() and Progress()
  };
  Progress progress = Progress::kAuto;
  // Sleep of the progress thread between polling rounds. Shorter reacts
  // faster and costs more CPU taken from the compute threads.
  int poll_interval_us = 50;
  // Wait() fails after this many seconds; 0 waits for ever.
  double wait_timeout_s = 600;
};

class MpiCommunicator final : public Communicator {
 public:
  // A duplicate of MPI_COMM_WORLD. MPI must be initialised (MpiEnvironment).
  static std::unique_ptr<MpiCommunicator> World(const MpiCommunicatorOptions& options = {});

  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }
  bool has_progress_thread() const;
  CommTime Times() const override;

  HandlePtr AllReduce(Tensor data, ReduceOp op) override;
  HandlePtr ReduceScatter(Tensor output, const Tensor& input) override;
  HandlePtr AllGather(Tensor output, const Tensor& input) override;
  HandlePtr Send(const Tensor& data, int peer, int tag) override;
  HandlePtr Recv(Tensor data, int peer, int tag) override;
  HandlePtr Broadcast(Tensor data, int root) override;
  HandlePtr Barrier() override;
  std::unique_ptr<Communicator> Split(int color, int key) override;
  void Progress() override;

  // Internals shared with the .cc file's helpers (MPI types stay out of this
  // header so that users of the interface need no MPI headers).
  struct Engine;
  struct Op;
  struct Comm;

 private:
  MpiCommunicator(std::shared_ptr<Engine> engine, std::unique_ptr<Comm> comm);
  HandlePtr DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts, const Tensor& input,
                        const std::vector<int64_t>& send_counts, int64_t row,
                        const Tensor& workspace) override;

  std::shared_ptr<Engine> engine_;
  std::unique_ptr<Comm> comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace moe

#endif  // MOE_PARALLEL_MPI_COMMUNICATOR_H_
