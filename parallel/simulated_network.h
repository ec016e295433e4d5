// SimulatedNetwork: wraps any Communicator and delays each operation's
// completion to what a network of latency alpha and bandwidth beta would
// allow, so that overlap and scaling can be studied on one machine for
// networks we do not have. The data still moves through the wrapped
// communicator (results are exact); only completion is held back:
//
//   modelled time = alpha + link_bytes / beta
//
// where link_bytes is what one rank puts on its link, for a group of n ranks
// and a tensor of S bytes (the bandwidth-optimal ring / pairwise algorithms,
// as in nccl-tests' bus bandwidth):
//   AllReduce       2 (n-1)/n * S        (reduce-scatter then all-gather)
//   ReduceScatter     (n-1)/n * S_input
//   AllGather         (n-1)/n * S_output
//   AllToAllV       bytes this rank sends to other ranks
//   Broadcast       S                    (pipelined: every link carries S once)
//   Send, Recv      S
//   Barrier         0                    (alpha only)
// A group of one rank has no network: no delay. Alpha is charged once per
// operation, as for a pipelined implementation.
//
// Operations on one communicator share its link: an operation's modelled
// transfer starts when the previous one's ends (or when issued, if later).
// Communicators from Split() get links of their own. The delay is a lower
// bound on completion: a real transfer slower than the model is not hidden.
#ifndef MOE_PARALLEL_SIMULATED_NETWORK_H_
#define MOE_PARALLEL_SIMULATED_NETWORK_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace moe {

// The trainer's --sim_latency_us and --sim_bandwidth_gbps (Gbit/s, divided by 8 into
// bandwidth_gb_per_s).
struct SimulatedNetworkOptions {
  double latency_us = 0;  // alpha, per operation
  // beta in GB/s (1e9 bytes per second); 0 means unlimited.
  double bandwidth_gb_per_s = 0;
};

class SimulatedNetwork final : public Communicator {
 public:
  SimulatedNetwork(std::shared_ptr<Communicator> inner, const SimulatedNetworkOptions& options);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return "sim(" + inner_->name() + ")"; }
  const SimulatedNetworkOptions& options() const { return options_; }

  // alpha + link_bytes / beta, in seconds (0 for a group of one).
  double ModelSeconds(double link_bytes) const;
  // The link bytes of the table above, for this group's size.
  double AllReduceLinkBytes(int64_t bytes) const;
  double ReduceScatterLinkBytes(int64_t input_bytes) const;
  double AllGatherLinkBytes(int64_t output_bytes) const;

  HandlePtr AllReduce(Tensor data, ReduceOp op) override;
  HandlePtr ReduceScatter(Tensor output, const Tensor& input) override;
  HandlePtr AllGather(Tensor output, const Tensor& input) override;
  HandlePtr Send(const Tensor& data, int peer, int tag) override;
  HandlePtr Recv(Tensor data, int peer, int tag) override;
  HandlePtr Broadcast(Tensor data, int root) override;
  HandlePtr Barrier() override;
  std::unique_ptr<Communicator> Split(int color, int key) override;
  void Progress() override { inner_->Progress(); }
  // The transport's times (the modelled delay is not in them).
  CommTime Times() const override { return inner_->Times(); }

 private:
  HandlePtr DoAllToAllV(Tensor* output, std::vector<int64_t>* recv_counts, const Tensor& input,
                        const std::vector<int64_t>& send_counts, int64_t row,
                        const Tensor& workspace) override;
  using Clock = std::chrono::steady_clock;
  // Wraps `inner` so that it completes no earlier than the modelled time.
  HandlePtr Delay(HandlePtr inner, double link_bytes);

  std::shared_ptr<Communicator> inner_;
  SimulatedNetworkOptions options_;
  Clock::time_point link_free_;
};

}  // namespace moe

#endif  // MOE_PARALLEL_SIMULATED_NETWORK_H_
