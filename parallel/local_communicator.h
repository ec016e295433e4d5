// LocalCommunicator: the communicator of a group of one rank. Every
// collective is a copy (or nothing) and completes when issued, so single-rank
// runs and machines without MPI use the same code path as many ranks.
// Send/Recv to itself are matched by tag; a Recv that no Send can match fails
// when waited instead of hanging.
#ifndef MOE_PARALLEL_LOCAL_COMMUNICATOR_H_
#define MOE_PARALLEL_LOCAL_COMMUNICATOR_H_

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator();

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }

  HandlePtr AllReduce(Tensor data, ReduceOp op) override;
  HandlePtr ReduceScatter(Tensor output, const Tensor& input) override;
  HandlePtr AllGather(Tensor output, const Tensor& input) override;
  HandlePtr Send(const Tensor& data, int peer, int tag) override;
  HandlePtr Recv(Tensor data, int peer, int tag) override;
  HandlePtr Broadcast(Tensor data, int root) override;
  HandlePtr Barrier() override;
  std::unique_ptr<Communicator> Split(int color, int key) override;

  // Messages sent to self and not yet received, and receives not yet matched.
  struct Mailbox {
    std::map<int, std::deque<Tensor>> sent;
    struct PendingRecv {
      Tensor data;
      std::shared_ptr<bool> done;
    };
    std::map<int, std::deque<PendingRecv>> receives;
  };

 private:
  HandlePtr DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts, const Tensor& input,
                        const std::vector<int64_t>& send_counts, int64_t row,
                        const Tensor& workspace) override;
  std::shared_ptr<Mailbox> mailbox_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_LOCAL_COMMUNICATOR_H_
