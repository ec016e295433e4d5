#include "parallel/simulated_network.h"

#include <algorithm>
#include <thread>
#include <utility>

namespace moe {
namespace {

class DelayedHandle final : public Handle {
 public:
  DelayedHandle(HandlePtr inner, std::chrono::steady_clock::time_point ready)
      : inner_(std::move(inner)), ready_(ready) {}
  ~DelayedHandle() override { Wait(); }

  void Wait() override {
    inner_->Wait();
    std::this_thread::sleep_until(ready_);
  }
  bool Test() override { return inner_->Test() && std::chrono::steady_clock::now() >= ready_; }

 private:
  HandlePtr inner_;
  std::chrono::steady_clock::time_point ready_;
};

}  // namespace

SimulatedNetwork::SimulatedNetwork(std::shared_ptr<Communicator> inner,
                                   const SimulatedNetworkOptions& options)
    : inner_(std::move(inner)), options_(options) {
  MOE_CHECK(inner_ != nullptr) << "SimulatedNetwork: no communicator to wrap";
  MOE_CHECK(options.latency_us >= 0)
      << "SimulatedNetwork: latency " << options.latency_us << " us must be >= 0";
  MOE_CHECK(options.bandwidth_gb_per_s >= 0)
      << "SimulatedNetwork: bandwidth " << options.bandwidth_gb_per_s
      << " GB/s must be >= 0 (0 means unlimited)";
}

double SimulatedNetwork::ModelSeconds(double link_bytes) const {
  if (size() == 1) return 0;
  double seconds = options_.latency_us * 1e-6;
  if (options_.bandwidth_gb_per_s > 0) seconds += link_bytes / (options_.bandwidth_gb_per_s * 1e9);
  return seconds;
}

double SimulatedNetwork::AllReduceLinkBytes(int64_t bytes) const {
  const int n = size();
  return 2.0 * (n - 1) / n * static_cast<double>(bytes);
}

double SimulatedNetwork::ReduceScatterLinkBytes(int64_t input_bytes) const {
  const int n = size();
  return static_cast<double>(n - 1) / n * static_cast<double>(input_bytes);
}

double SimulatedNetwork::AllGatherLinkBytes(int64_t output_bytes) const {
  const int n = size();
  return static_cast<double>(n - 1) / n * static_cast<double>(output_bytes);
}

HandlePtr SimulatedNetwork::Delay(HandlePtr inner, double link_bytes) {
  const auto duration = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(ModelSeconds(link_bytes)));
  const Clock::time_point start = std::max(Clock::now(), link_free_);
  link_free_ = start + duration;
  return std::make_unique<DelayedHandle>(std::move(inner), link_free_);
}

HandlePtr SimulatedNetwork::AllReduce(Tensor data, ReduceOp op) {
  const double bytes = AllReduceLinkBytes(static_cast<int64_t>(data.nbytes()));
  return Delay(inner_->AllReduce(std::move(data), op), bytes);
}

HandlePtr SimulatedNetwork::ReduceScatter(Tensor output, const Tensor& input) {
  const double bytes = ReduceScatterLinkBytes(static_cast<int64_t>(input.nbytes()));
  return Delay(inner_->ReduceScatter(std::move(output), input), bytes);
}

HandlePtr SimulatedNetwork::AllGather(Tensor output, const Tensor& input) {
  const double bytes = AllGatherLinkBytes(static_cast<int64_t>(output.nbytes()));
  return Delay(inner_->AllGather(std::move(output), input), bytes);
}

HandlePtr SimulatedNetwork::DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts,
                                        const Tensor& input,
                                        const std::vector<int64_t>& send_counts, int64_t row,
                                        const Tensor& workspace) {
  HandlePtr handle = inner_->AllToAllV(output, recv_counts, input, send_counts, workspace);
  const double row_bytes = static_cast<double>(row) * static_cast<double>(DTypeSize(input.dtype()));
  double bytes = 0;
  for (int p = 0; p < size(); ++p) {
    if (p != rank()) bytes += row_bytes * static_cast<double>(send_counts[p]);
  }
  return Delay(std::move(handle), bytes);
}

HandlePtr SimulatedNetwork::Send(const Tensor& data, int peer, int tag) {
  return Delay(inner_->Send(data, peer, tag), static_cast<double>(data.nbytes()));
}

HandlePtr SimulatedNetwork::Recv(Tensor data, int peer, int tag) {
  const double bytes = static_cast<double>(data.nbytes());
  return Delay(inner_->Recv(std::move(data), peer, tag), bytes);
}

HandlePtr SimulatedNetwork::Broadcast(Tensor data, int root) {
  const double bytes = static_cast<double>(data.nbytes());
  return Delay(inner_->Broadcast(std::move(data), root), bytes);
}

HandlePtr SimulatedNetwork::Barrier() { return Delay(inner_->Barrier(), 0); }

std::unique_ptr<Communicator> SimulatedNetwork::Split(int color, int key) {
  std::unique_ptr<Communicator> inner = inner_->Split(color, key);
  if (inner == nullptr) return nullptr;
  return std::make_unique<SimulatedNetwork>(std::move(inner), options_);
}

}  // namespace moe
