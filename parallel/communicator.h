// Communicator: the one interface through which every parallel layer talks to
// its peers (TP all-reduce, EP all-to-all-v, DP reduce-scatter, PP send/recv).
//
// Every operation is asynchronous (DESIGN.md property 3): it is issued at once
// and returns a Handle; the caller computes and calls Wait() when it needs the
// result. Until Wait() (or a Test() that returned true), the caller must not
// read an output nor write an input. A Handle's destructor waits, so dropping
// one never leaves a transfer running into freed memory.
//
// Collectives must be issued in the same order on every rank of a
// communicator (as in MPI and NCCL); they may be waited in any order.
//
// Tensors are CPU tensors for the MPI and local implementations; the interface
// names no MPI type so that an NCCL implementation on CUDA tensors fits it.
// Element types: kF32, kF64, kI32, kI64 everywhere; kBF16 for the operations
// that move data without arithmetic (all-gather, all-to-all-v, broadcast,
// send/recv), not for reductions.
#ifndef MOE_PARALLEL_COMMUNICATOR_H_
#define MOE_PARALLEL_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace moe {

enum class ReduceOp : uint8_t {
  kSum,
  kMax,  // overflow / NaN checks and loss-scale agreement
};
std::string_view ReduceOpName(ReduceOp op);

// A running operation.
class Handle {
 public:
  virtual ~Handle() = default;
  // Blocks until the operation has completed; outputs are valid afterwards.
  // Calling it again returns at once.
  virtual void Wait() = 0;
  // Never blocks; true once the operation has completed (outputs then valid,
  // as after Wait()). Each call also advances the transfer.
  virtual bool Test() = 0;
};
using HandlePtr = std::unique_ptr<Handle>;

class Communicator {
 public:
  // Split() colour of a rank that joins no group.
  static constexpr int kNoColor = -1;

  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // For messages: "mpi", "local", "sim(mpi)".
  virtual std::string name() const = 0;

  // data: any shape, in place; every rank passes the same numel and dtype.
  virtual HandlePtr AllReduce(Tensor data, ReduceOp op) = 0;

  // input: size() equal blocks of output.numel() elements each, block i for
  // rank i -> output: the sum over ranks of this rank's block.
  virtual HandlePtr ReduceScatter(Tensor output, const Tensor& input) = 0;

  // input: one block -> output: size() * input.numel() elements, block i from
  // rank i. output must not overlap input.
  virtual HandlePtr AllGather(Tensor output, const Tensor& input) = 0;

  // Variable all-to-all over the rows (first dimension) of `input`; a 1-D
  // tensor's rows are its elements. send_counts[p] rows go to rank p, taken in
  // rank order from the front of input (sum(send_counts) == input.dim(0)).
  // The counts are exchanged first, inside the operation, so the receiver
  // need not know them: when the handle completes, *recv_counts[p] holds the
  // rows received from rank p and *output a newly allocated tensor
  // [sum(recv_counts), input's other dims...] with the rows in rank order.
  // output and recv_counts are written at completion (in Wait() or the Test()
  // that returns true) and must outlive the handle. Any count may be 0,
  // including every count of a rank.
  // `workspace` (optional; same dtype and device as input): when it has room
  // for what arrives, *output is a view of its front instead of a new
  // allocation, so that a layer calling every step touches no fresh pages
  // (a fresh 32 MB buffer costs more than the transfer on a CPU).
  HandlePtr AllToAllV(Tensor* output, std::vector<int64_t>* recv_counts, const Tensor& input,
                      const std::vector<int64_t>& send_counts, const Tensor& workspace = Tensor());

  // Point to point. A Recv matches the Send from `peer` with the same tag;
  // the received tensor must have the numel and dtype that was sent.
  virtual HandlePtr Send(const Tensor& data, int peer, int tag) = 0;
  virtual HandlePtr Recv(Tensor data, int peer, int tag) = 0;

  // data on `root` is copied into data on every other rank.
  virtual HandlePtr Broadcast(Tensor data, int root) = 0;

  virtual HandlePtr Barrier() = 0;

  // Collective over this communicator (blocking; called at start-up): ranks
  // with the same colour form a new communicator, ranked by (key, old rank).
  // Returns nullptr on a rank whose colour is kNoColor.
  virtual std::unique_ptr<Communicator> Split(int color, int key) = 0;

  // Lets queued operations advance; a compute loop may call it between
  // chunks when the implementation has no progress thread (see
  // MpiCommunicator). Never blocks.
  virtual void Progress() {}

  // Communication time of every operation completed so far, cumulative over
  // this communicator and every group split from it: `exposed_s` is how long
  // callers waited in Wait() for operations still running, `hidden_s` how
  // long operations ran while the caller computed (issue to completion,
  // minus the exposed part). Implementations that cannot tell report zeros.
  struct CommTime {
    double exposed_s = 0;
    double hidden_s = 0;
  };
  virtual CommTime Times() const { return {}; }

  // Convenience: issue and wait.
  void AllReduceSync(Tensor data, ReduceOp op) { AllReduce(std::move(data), op)->Wait(); }

 private:
  // AllToAllV after the shared argument checks (`row`: elements per row).
  virtual HandlePtr DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts,
                                const Tensor& input, const std::vector<int64_t>& send_counts,
                                int64_t row, const Tensor& workspace) = 0;
};

// A handle for an operation that finished when it was issued.
class CompletedHandle final : public Handle {
 public:
  void Wait() override {}
  bool Test() override { return true; }
};

// Argument checks shared by the implementations, so that every backend
// rejects the same calls with the same message. `who` names the
// communicator and operation ("mpi AllReduce").
void CheckCommTensor(const Tensor& t, const std::string& who, const char* role);
void CheckReducible(const Tensor& t, ReduceOp op, const std::string& who);
void CheckReduceScatterArgs(const Tensor& output, const Tensor& input, int size,
                            const std::string& who);
void CheckAllGatherArgs(const Tensor& output, const Tensor& input, int size,
                        const std::string& who);
// Returns the elements per row of `input` (1 for a 1-D tensor).
int64_t CheckAllToAllVArgs(const Tensor& input, const std::vector<int64_t>& send_counts, int size,
                           const std::string& who);
void CheckPeer(int peer, int size, const std::string& who);

// The tensor of `shape` and `dtype` that receives a variable-size result: a
// view of the front of `workspace` when it has room, else a new one.
Tensor OutputIn(const Tensor& workspace, const Shape& shape, DType dtype);

}  // namespace moe

#endif  // MOE_PARALLEL_COMMUNICATOR_H_
