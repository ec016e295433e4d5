#include "parallel/local_communicator.h"

#include <utility>

namespace moe {
namespace {

void CopyMessage(Tensor& dst, const Tensor& src, const char* who) {
  MOE_CHECK(dst.numel() == src.numel() && dst.dtype() == src.dtype())
      << who << ": received " << src.Describe() << " into " << dst.Describe()
      << "; Recv must match the numel and dtype of the Send";
  dst.Reshape(src.shape()).CopyFrom(src);
}

// A Recv posted before its Send: completes when a Send with its tag arrives.
class LocalRecvHandle final : public Handle {
 public:
  LocalRecvHandle(std::shared_ptr<bool> done, int tag) : done_(std::move(done)), tag_(tag) {}
  void Wait() override {
    MOE_CHECK(*done_) << "local Recv(tag " << tag_
                      << "): waited before any Send with this tag was issued; on one rank "
                         "that is a deadlock";
  }
  bool Test() override { return *done_; }

 private:
  std::shared_ptr<bool> done_;
  int tag_;
};

}  // namespace

LocalCommunicator::LocalCommunicator() : mailbox_(std::make_shared<Mailbox>()) {}

HandlePtr LocalCommunicator::AllReduce(Tensor data, ReduceOp op) {
  CheckReducible(data, op, "local AllReduce");
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::ReduceScatter(Tensor output, const Tensor& input) {
  CheckReduceScatterArgs(output, input, 1, "local ReduceScatter");
  output.CopyFrom(input.Reshape(output.shape()));
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::AllGather(Tensor output, const Tensor& input) {
  CheckAllGatherArgs(output, input, 1, "local AllGather");
  output.CopyFrom(input.Reshape(output.shape()));
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts,
                                         const Tensor& input,
                                         const std::vector<int64_t>& send_counts, int64_t row,
                                         const Tensor& workspace) {
  *recv_counts = send_counts;
  *output = OutputIn(workspace, input.shape(), input.dtype());
  output->CopyFrom(input);
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::Send(const Tensor& data, int peer, int tag) {
  CheckCommTensor(data, "local Send", "data");
  CheckPeer(peer, 1, "local Send");
  auto& waiting = mailbox_->receives[tag];
  if (!waiting.empty()) {
    Mailbox::PendingRecv recv = std::move(waiting.front());
    waiting.pop_front();
    CopyMessage(recv.data, data, "local Recv");
    *recv.done = true;
  } else {
    mailbox_->sent[tag].push_back(data.Clone());  // buffered, as MPI may do
  }
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::Recv(Tensor data, int peer, int tag) {
  CheckCommTensor(data, "local Recv", "data");
  CheckPeer(peer, 1, "local Recv");
  auto& sent = mailbox_->sent[tag];
  if (!sent.empty()) {
    CopyMessage(data, sent.front(), "local Recv");
    sent.pop_front();
    return std::make_unique<CompletedHandle>();
  }
  auto done = std::make_shared<bool>(false);
  mailbox_->receives[tag].push_back({data, done});
  return std::make_unique<LocalRecvHandle>(done, tag);
}

HandlePtr LocalCommunicator::Broadcast(Tensor data, int root) {
  CheckCommTensor(data, "local Broadcast", "data");
  CheckPeer(root, 1, "local Broadcast");
  return std::make_unique<CompletedHandle>();
}

HandlePtr LocalCommunicator::Barrier() { return std::make_unique<CompletedHandle>(); }

std::unique_ptr<Communicator> LocalCommunicator::Split(int color, int key) {
  if (color == kNoColor) return nullptr;
  MOE_CHECK(color >= 0) << "local Split: colour " << color
                        << " must be >= 0 or Communicator::kNoColor";
  return std::make_unique<LocalCommunicator>();
}

}  // namespace moe
