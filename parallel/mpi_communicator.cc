#include "parallel/mpi_communicator.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace moe {
namespace {

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "(unknown MPI error)";
  return std::string(text, length);
}

void MpiCheck(int rc, const std::string& what) {
  MOE_CHECK(rc == MPI_SUCCESS) << what << ": MPI error " << rc << ": " << MpiErrorString(rc);
}

MPI_Datatype ToMpi(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kBF16:
      return MPI_UINT16_T;  // moved as bits; reductions reject bf16 before this
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op ToMpi(ReduceOp op) { return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX; }

int CheckedCount(int64_t count, const std::string& who) {
  MOE_CHECK(count <= INT_MAX) << who << ": " << count
                              << " elements exceed MPI's int count; split the tensor";
  return static_cast<int>(count);
}

}  // namespace

// MPI requires every rank to issue the collectives of a communicator in the
// same order. AllToAllV issues its data exchange only when its counts have
// arrived, which happens at different moments on different ranks, so the
// data exchanges go on a second communicator of their own, in the order their
// AllToAllV calls were made (a ticket each).
struct MpiCommunicator::Comm {
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm data_comm = MPI_COMM_NULL;  // AllToAllV data exchanges only
  int64_t tickets_issued = 0;          // AllToAllV calls so far
  int64_t next_ticket = 0;             // the next whose data exchange may start
};

// One issued operation. Fields other than `done` are touched only under the
// engine's lock (or, after completion, by the handle's owner).
struct MpiCommunicator::Op {
  std::string what;  // "mpi AllReduce of f32[1000] over 4 ranks"
  Comm* comm = nullptr;
  MPI_Request request = MPI_REQUEST_NULL;
  // When `request` completes and comm->next_ticket reaches `ticket`: issues
  // the next stage (setting `request`). Empty when none is left.
  std::function<void(Op&)> next;
  int64_t ticket = -1;
  bool waiting_for_turn = false;
  // A Recv checks the size of what arrived.
  int expected_count = -1;
  MPI_Datatype datatype = MPI_DATATYPE_NULL;
  std::atomic<bool> done{false};
  // Issue and completion times (completion set under the engine's lock
  // before `done`), for Communicator::Times().
  std::chrono::steady_clock::time_point issued_at = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point completed_at;
  std::vector<Tensor> keep_alive;
  // AllToAllV: rows per peer, then element counts and displacements.
  std::vector<int64_t> rows_out, rows_in;
  std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
  Tensor result;
};

struct MpiCommunicator::Engine {
  MpiCommunicatorOptions options;
  bool use_thread = false;
  std::mutex mu;
  std::condition_variable work_arrived;
  std::vector<std::shared_ptr<Op>> outstanding;
  bool stop = false;
  std::thread thread;
  // Communicator::Times(), summed over every finished operation (under mu).
  double exposed_s = 0;
  double hidden_s = 0;

  ~Engine() {
    if (thread.joinable()) {
      {
        std::lock_guard lock(mu);
        stop = true;
      }
      work_arrived.notify_all();
      thread.join();
    }
  }

  // Under mu. Tests the op's request and runs its next stages as they finish.
  void Advance(Op& op) {
    while (!op.done.load(std::memory_order_relaxed)) {
      if (op.waiting_for_turn) {
        if (op.comm->next_ticket != op.ticket) return;
        op.waiting_for_turn = false;
        ++op.comm->next_ticket;
        std::function<void(Op&)> next = std::move(op.next);
        op.next = nullptr;
        next(op);
        continue;
      }
      int flag = 0;
      MPI_Status status;
      MpiCheck(MPI_Test(&op.request, &flag, &status), op.what);
      if (!flag) return;
      if (op.expected_count >= 0) {
        int count = 0;
        MpiCheck(MPI_Get_count(&status, op.datatype, &count), op.what);
        MOE_CHECK(count == op.expected_count)
            << op.what << ": received " << count << " elements, expected " << op.expected_count
            << "; Recv must match the numel and dtype of the Send";
      }
      if (op.next) {
        op.waiting_for_turn = true;
      } else {
        op.completed_at = std::chrono::steady_clock::now();
        op.done.store(true, std::memory_order_release);
      }
    }
  }

  // Under mu.
  void AdvanceAll() {
    for (auto& op : outstanding) Advance(*op);
    std::erase_if(outstanding, [](const std::shared_ptr<Op>& op) { return op->done.load(); });
  }

  void Loop() {
    std::unique_lock lock(mu);
    while (!stop) {
      if (outstanding.empty()) {
        work_arrived.wait(lock);
        continue;
      }
      AdvanceAll();
      if (outstanding.empty()) continue;
      // Sleeping, not spinning: the compute threads need the cores.
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(options.poll_interval_us));
      lock.lock();
    }
  }
};

namespace {

using Engine = MpiCommunicator::Engine;
using Op = MpiCommunicator::Op;

class MpiHandle final : public Handle {
 public:
  MpiHandle(std::shared_ptr<Engine> engine, std::shared_ptr<Op> op, std::function<void(Op&)> finish)
      : engine_(std::move(engine)), op_(std::move(op)), finish_(std::move(finish)) {}
  ~MpiHandle() override { Wait(); }

  void Wait() override {
    if (finished_) return;
    const auto start = std::chrono::steady_clock::now();
    if (!waited_since_.has_value()) waited_since_ = start;
    const double timeout = engine_->options.wait_timeout_s;
    for (int64_t spins = 1; !op_->done.load(std::memory_order_acquire); ++spins) {
      {
        std::lock_guard lock(engine_->mu);
        engine_->Advance(*op_);
        // An AllToAllV may wait for the turn of an earlier one.
        if (op_->waiting_for_turn) engine_->AdvanceAll();
      }
      if (op_->done.load(std::memory_order_acquire)) break;
      if (timeout > 0 && spins % 256 == 0) {
        const double waited =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        MOE_CHECK(waited < timeout)
            << op_->what << " did not complete within " << timeout
            << " s (MpiCommunicatorOptions::wait_timeout_s): a peer stopped, or the ranks "
               "issued collectives on this communicator in different orders";
      }
      std::this_thread::yield();
    }
    Finish();
  }

  bool Test() override {
    if (finished_) return true;
    if (!op_->done.load(std::memory_order_acquire)) {
      std::lock_guard lock(engine_->mu);
      engine_->Advance(*op_);
      if (op_->waiting_for_turn) engine_->AdvanceAll();
    }
    if (!op_->done.load(std::memory_order_acquire)) return false;
    Finish();
    return true;
  }

 private:
  void Finish() {
    finished_ = true;
    {
      // Exposed: from the first Wait() to completion (0 if it completed
      // before anyone waited); hidden: the rest of issue to completion.
      using Seconds = std::chrono::duration<double>;
      const auto issued = op_->issued_at, completed = op_->completed_at;
      const double total = std::max(0.0, Seconds(completed - issued).count());
      const double exposed = waited_since_.has_value()
                                 ? std::max(0.0, Seconds(completed - *waited_since_).count())
                                 : 0.0;
      std::lock_guard lock(engine_->mu);
      engine_->exposed_s += std::min(exposed, total);
      engine_->hidden_s += total - std::min(exposed, total);
    }
    if (finish_) finish_(*op_);
    op_->keep_alive.clear();
  }

  std::shared_ptr<Engine> engine_;
  std::optional<std::chrono::steady_clock::time_point> waited_since_;
  std::shared_ptr<Op> op_;
  std::function<void(Op&)> finish_;
  bool finished_ = false;
};

}  // namespace

MpiEnvironment::MpiEnvironment(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  MOE_CHECK(!initialized) << "MpiEnvironment: MPI is already initialised; create one per process";
  int provided = MPI_THREAD_SINGLE;
  MpiCheck(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  thread_multiple_ = provided == MPI_THREAD_MULTIPLE;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
}

MpiEnvironment::~MpiEnvironment() { MPI_Finalize(); }

std::unique_ptr<MpiCommunicator> MpiCommunicator::World(const MpiCommunicatorOptions& options) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  MOE_CHECK(initialized)
      << "MpiCommunicator::World: MPI is not initialised; create an MpiEnvironment in main()";
  MOE_CHECK(options.poll_interval_us >= 0)
      << "MpiCommunicator: poll_interval_us " << options.poll_interval_us << " must be >= 0";
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  const bool multiple = provided == MPI_THREAD_MULTIPLE;
  int world_rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);

  auto engine = std::make_shared<Engine>();
  engine->options = options;
  switch (options.progress) {
    case MpiCommunicatorOptions::Progress::kThread:
      MOE_CHECK(multiple) << "MpiCommunicator: a progress thread needs MPI_THREAD_MULTIPLE, "
                             "which this MPI did not grant (level "
                          << provided << "); use Progress::kCallerPolls and call Progress()";
      engine->use_thread = true;
      break;
    case MpiCommunicatorOptions::Progress::kAuto:
      engine->use_thread = multiple;
      if (!multiple && world_rank == 0) {
        std::fprintf(stderr,
                     "MpiCommunicator: MPI granted thread level %d, not MPI_THREAD_MULTIPLE: "
                     "no progress thread; collectives advance only in Test(), Wait() and "
                     "Progress()\n",
                     provided);
      }
      break;
    case MpiCommunicatorOptions::Progress::kCallerPolls:
      break;
  }
  if (engine->use_thread) engine->thread = std::thread([e = engine.get()] { e->Loop(); });

  auto comm = std::make_unique<Comm>();
  MpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &comm->comm), "MpiCommunicator::World: MPI_Comm_dup");
  MpiCheck(MPI_Comm_dup(MPI_COMM_WORLD, &comm->data_comm), "MpiCommunicator::World: MPI_Comm_dup");
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(engine, std::move(comm)));
}

MpiCommunicator::MpiCommunicator(std::shared_ptr<Engine> engine, std::unique_ptr<Comm> comm)
    : engine_(std::move(engine)), comm_(std::move(comm)) {
  MpiCheck(MPI_Comm_set_errhandler(comm_->comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  MpiCheck(MPI_Comm_set_errhandler(comm_->data_comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  MPI_Comm_rank(comm_->comm, &rank_);
  MPI_Comm_size(comm_->comm, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  // Operations still running on this communicator must finish before it is
  // freed (their handles may outlive it).
  for (;;) {
    bool pending = false;
    {
      std::lock_guard lock(engine_->mu);
      for (auto& op : engine_->outstanding) {
        if (op->comm != comm_.get()) continue;
        engine_->Advance(*op);
        pending = pending || !op->done.load();
      }
    }
    if (!pending) break;
    std::this_thread::yield();
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    MPI_Comm_free(&comm_->comm);
    MPI_Comm_free(&comm_->data_comm);
  }
}

bool MpiCommunicator::has_progress_thread() const { return engine_->use_thread; }

Communicator::CommTime MpiCommunicator::Times() const {
  std::lock_guard lock(engine_->mu);
  return {.exposed_s = engine_->exposed_s, .hidden_s = engine_->hidden_s};
}

void MpiCommunicator::Progress() {
  std::lock_guard lock(engine_->mu);
  engine_->AdvanceAll();
}

namespace {

std::shared_ptr<Op> NewOp(const char* operation, const Tensor& t, int size) {
  auto op = std::make_shared<Op>();
  op->what = std::string("mpi ") + operation + " of " + t.Describe() + " over " +
             std::to_string(size) + " ranks";
  return op;
}

// Issues `start` (an MPI_I* call writing the request) and registers the op.
HandlePtr Issue(const std::shared_ptr<Engine>& engine, std::shared_ptr<Op> op,
                const std::function<int(MPI_Request*)>& start,
                std::function<void(Op&)> finish = nullptr) {
  {
    std::lock_guard lock(engine->mu);
    MpiCheck(start(&op->request), op->what);
    std::erase_if(engine->outstanding, [](const std::shared_ptr<Op>& o) { return o->done.load(); });
    engine->outstanding.push_back(op);
  }
  engine->work_arrived.notify_one();
  return std::make_unique<MpiHandle>(engine, std::move(op), std::move(finish));
}

}  // namespace

HandlePtr MpiCommunicator::AllReduce(Tensor data, ReduceOp reduce) {
  CheckReducible(data, reduce, "mpi AllReduce");
  auto op = NewOp("AllReduce", data, size_);
  op->comm = comm_.get();
  const int count = CheckedCount(data.numel(), op->what);
  op->keep_alive = {data};
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Iallreduce(MPI_IN_PLACE, data.raw_data(), count, ToMpi(data.dtype()), ToMpi(reduce),
                          comm, request);
  });
}

HandlePtr MpiCommunicator::ReduceScatter(Tensor output, const Tensor& input) {
  CheckReduceScatterArgs(output, input, size_, "mpi ReduceScatter");
  auto op = NewOp("ReduceScatter", input, size_);
  op->comm = comm_.get();
  const int count = CheckedCount(output.numel(), op->what);
  op->keep_alive = {output, input};
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Ireduce_scatter_block(input.raw_data(), output.raw_data(), count,
                                     ToMpi(input.dtype()), MPI_SUM, comm, request);
  });
}

HandlePtr MpiCommunicator::AllGather(Tensor output, const Tensor& input) {
  CheckAllGatherArgs(output, input, size_, "mpi AllGather");
  auto op = NewOp("AllGather", input, size_);
  op->comm = comm_.get();
  const int count = CheckedCount(input.numel(), op->what);
  op->keep_alive = {output, input};
  MPI_Comm comm = comm_->comm;
  const MPI_Datatype type = ToMpi(input.dtype());
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Iallgather(input.raw_data(), count, type, output.raw_data(), count, type, comm,
                          request);
  });
}

HandlePtr MpiCommunicator::DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts,
                                       const Tensor& input, const std::vector<int64_t>& send_counts,
                                       int64_t row, const Tensor& workspace) {
  auto op = NewOp("AllToAllV", input, size_);
  op->comm = comm_.get();
  op->keep_alive = {input, workspace};
  op->rows_out = send_counts;
  op->rows_in.assign(size_, 0);
  MPI_Comm comm = comm_->comm;
  MPI_Comm data_comm = comm_->data_comm;
  op->ticket = comm_->tickets_issued++;
  // Stage 2, once the counts have arrived: allocate and move the rows.
  op->next = [input, row, data_comm, workspace](Op& o) {
    const int n = static_cast<int>(o.rows_out.size());
    o.send_counts.resize(n);
    o.send_displs.resize(n);
    o.recv_counts.resize(n);
    o.recv_displs.resize(n);
    int64_t sent = 0, received = 0;
    for (int p = 0; p < n; ++p) {
      o.send_displs[p] = CheckedCount(sent, o.what);
      o.recv_displs[p] = CheckedCount(received, o.what);
      o.send_counts[p] = CheckedCount(o.rows_out[p] * row, o.what);
      MOE_CHECK(o.rows_in[p] >= 0)
          << o.what << ": rank " << p << " announced " << o.rows_in[p] << " rows";
      o.recv_counts[p] = CheckedCount(o.rows_in[p] * row, o.what);
      sent += o.send_counts[p];
      received += o.recv_counts[p];
    }
    CheckedCount(received, o.what);
    Shape shape = input.shape();
    shape[0] = 0;
    for (int64_t rows : o.rows_in) shape[0] += rows;
    o.result = OutputIn(workspace, shape, input.dtype());
    const MPI_Datatype type = ToMpi(input.dtype());
    MpiCheck(MPI_Ialltoallv(input.raw_data(), o.send_counts.data(), o.send_displs.data(), type,
                            o.result.raw_data(), o.recv_counts.data(), o.recv_displs.data(), type,
                            data_comm, &o.request),
             o.what);
  };
  return Issue(
      engine_, op,
      [&](MPI_Request* request) {
        return MPI_Ialltoall(op->rows_out.data(), 1, MPI_INT64_T, op->rows_in.data(), 1,
                             MPI_INT64_T, comm, request);
      },
      [output, recv_counts](Op& o) {
        *recv_counts = o.rows_in;
        *output = o.result;
      });
}

HandlePtr MpiCommunicator::Send(const Tensor& data, int peer, int tag) {
  CheckCommTensor(data, "mpi Send", "data");
  CheckPeer(peer, size_, "mpi Send");
  auto op = NewOp("Send", data, size_);
  op->what += " to rank " + std::to_string(peer) + " tag " + std::to_string(tag);
  op->comm = comm_.get();
  MOE_CHECK(tag >= 0) << op->what << ": tag must be >= 0";
  const int count = CheckedCount(data.numel(), op->what);
  op->keep_alive = {data};
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Isend(data.raw_data(), count, ToMpi(data.dtype()), peer, tag, comm, request);
  });
}

HandlePtr MpiCommunicator::Recv(Tensor data, int peer, int tag) {
  CheckCommTensor(data, "mpi Recv", "data");
  CheckPeer(peer, size_, "mpi Recv");
  auto op = NewOp("Recv", data, size_);
  op->what += " from rank " + std::to_string(peer) + " tag " + std::to_string(tag);
  op->comm = comm_.get();
  MOE_CHECK(tag >= 0) << op->what << ": tag must be >= 0";
  const int count = CheckedCount(data.numel(), op->what);
  op->expected_count = count;
  op->datatype = ToMpi(data.dtype());
  op->keep_alive = {data};
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Irecv(data.raw_data(), count, ToMpi(data.dtype()), peer, tag, comm, request);
  });
}

HandlePtr MpiCommunicator::Broadcast(Tensor data, int root) {
  CheckCommTensor(data, "mpi Broadcast", "data");
  CheckPeer(root, size_, "mpi Broadcast");
  auto op = NewOp("Broadcast", data, size_);
  op->comm = comm_.get();
  const int count = CheckedCount(data.numel(), op->what);
  op->keep_alive = {data};
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) {
    return MPI_Ibcast(data.raw_data(), count, ToMpi(data.dtype()), root, comm, request);
  });
}

HandlePtr MpiCommunicator::Barrier() {
  auto op = std::make_shared<Op>();
  op->what = "mpi Barrier over " + std::to_string(size_) + " ranks";
  op->comm = comm_.get();
  MPI_Comm comm = comm_->comm;
  return Issue(engine_, op, [&](MPI_Request* request) { return MPI_Ibarrier(comm, request); });
}

std::unique_ptr<Communicator> MpiCommunicator::Split(int color, int key) {
  MOE_CHECK(color >= 0 || color == kNoColor)
      << "mpi Split: colour " << color << " must be >= 0 or Communicator::kNoColor";
  auto comm = std::make_unique<Comm>();
  MpiCheck(MPI_Comm_split(comm_->comm, color == kNoColor ? MPI_UNDEFINED : color, key, &comm->comm),
           "mpi Split(colour " + std::to_string(color) + ", key " + std::to_string(key) + ")");
  if (comm->comm == MPI_COMM_NULL) return nullptr;
  MpiCheck(MPI_Comm_dup(comm->comm, &comm->data_comm), "mpi Split: MPI_Comm_dup");
  return std::unique_ptr<Communicator>(new MpiCommunicator(engine_, std::move(comm)));
}

}  // namespace moe
