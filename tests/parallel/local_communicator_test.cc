// The one-rank communicator and the simulated network's model, without MPI.
#include "parallel/local_communicator.h"

#include <gtest/gtest.h>

#include "parallel/simulated_network.h"
#include "tests/parallel/comm_suite.h"
#include "tests/parallel/comm_test_util.h"

namespace moe {
namespace {

TEST(LocalCommunicatorTest, PassesTheCommunicatorSuite) {
  LocalCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  testing::CheckAll(comm);
}

TEST(LocalCommunicatorTest, SendBeforeRecvAndRecvBeforeSendBothMatchByTag) {
  LocalCommunicator comm;
  const Tensor a = testing::RankData({9}, DType::kF32, 1, 0);
  const Tensor b = testing::RankData({4}, DType::kI32, 2, 0);
  Tensor got_b = Tensor::Empty({4}, DType::kI32);
  HandlePtr recv_b = comm.Recv(got_b, 0, /*tag=*/2);
  EXPECT_FALSE(recv_b->Test());
  comm.Send(a, 0, /*tag=*/1)->Wait();
  comm.Send(b, 0, /*tag=*/2)->Wait();
  EXPECT_TRUE(recv_b->Test());
  Tensor got_a = Tensor::Empty({9}, DType::kF32);
  comm.Recv(got_a, 0, 1)->Wait();
  EXPECT_EQ(testing::Mismatch(got_a, a), 0);
  EXPECT_EQ(testing::Mismatch(got_b, b), 0);
}

TEST(LocalCommunicatorDeathTest, UnmatchedRecvFailsInsteadOfHanging) {
  LocalCommunicator comm;
  Tensor t = Tensor::Empty({3}, DType::kF32);
  EXPECT_DEATH(comm.Recv(t, 0, 5)->Wait(), "local Recv\\(tag 5\\).*deadlock");
}

TEST(LocalCommunicatorDeathTest, BadArgumentsNameTheOperation) {
  LocalCommunicator comm;
  Tensor bf16 = Tensor::Zeros({4}, DType::kBF16);
  EXPECT_DEATH(comm.AllReduce(bf16, ReduceOp::kSum), "local AllReduce: cannot reduce \\(sum\\)");
  Tensor out = Tensor::Empty({3}, DType::kF32);
  EXPECT_DEATH(comm.ReduceScatter(out, Tensor::Zeros({4}, DType::kF32)),
               "local ReduceScatter: input .* must hold 1 \\(the group size\\) blocks");
  EXPECT_DEATH(comm.AllGather(out, Tensor::Zeros({3}, DType::kF64)),
               "local AllGather: output .* must have the same dtype");
  Tensor result;
  std::vector<int64_t> counts;
  EXPECT_DEATH(comm.AllToAllV(&result, &counts, Tensor::Zeros({5, 2}, DType::kF32), {4}),
               "local AllToAllV: send counts sum to 4 rows but input .* has 5");
  EXPECT_DEATH(comm.AllToAllV(&result, &counts, Tensor::Zeros({5}, DType::kF32), {5, 0}),
               "local AllToAllV: 2 send counts for a group of 1 ranks");
  EXPECT_DEATH(comm.Send(out, 1, 0), "local Send: peer 1 is outside the group of 1 ranks");
  EXPECT_DEATH(comm.Broadcast(Tensor(), 0), "local Broadcast: data tensor is undefined");
}

TEST(SimulatedNetworkTest, OverOneRankPassesTheSuiteWithoutDelay) {
  SimulatedNetwork sim(std::make_shared<LocalCommunicator>(),
                       {.latency_us = 1e6, .bandwidth_gb_per_s = 1e-6});
  EXPECT_EQ(sim.name(), "sim(local)");
  // A group of one has no network (a delay of 1 s per operation would run
  // the suite into the test's timeout).
  EXPECT_EQ(sim.ModelSeconds(1e9), 0);
  testing::CheckAll(sim);
}

TEST(SimulatedNetworkDeathTest, RejectsNegativeOptions) {
  EXPECT_DEATH(SimulatedNetwork(std::make_shared<LocalCommunicator>(), {.latency_us = -1}),
               "SimulatedNetwork: latency -1 us must be >= 0");
  EXPECT_DEATH(SimulatedNetwork(std::make_shared<LocalCommunicator>(), {.bandwidth_gb_per_s = -2}),
               "SimulatedNetwork: bandwidth -2 GB/s must be >= 0");
}

}  // namespace
}  // namespace moe
