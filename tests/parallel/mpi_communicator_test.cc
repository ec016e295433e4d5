// MpiCommunicator and SimulatedNetwork under mpirun (tests/parallel/CMakeLists.txt
// runs this binary on 1, 2, 3, 4 and 8 ranks). Each check compares with a
// serial reference that every rank computes from the same Philox data.
#include "parallel/mpi_communicator.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <memory>
#include <thread>

#include "parallel/simulated_network.h"
#include "tests/parallel/comm_suite.h"
#include "tests/parallel/comm_test_util.h"
#include "tests/parallel/mpi_test_env.h"

namespace moe {
namespace {

using testing::World;

TEST(MpiCommunicatorTest, HasAProgressThreadWhereMpiAllowsIt) {
  int provided = 0;
  MPI_Query_thread(&provided);
  EXPECT_EQ(World().has_progress_thread(), provided == MPI_THREAD_MULTIPLE);
}

// Times(): every finished operation adds its issue-to-completion time,
// split into exposed and hidden; one completed through Test() alone (nobody
// waited) adds no exposed time at all; split groups share the totals. (No
// assertion depends on how fast anything runs.)
TEST(MpiCommunicatorTest, TimesSplitExposedFromHidden) {
  MpiCommunicator& world = World();
  if (world.size() < 2) GTEST_SKIP() << "one rank communicates nothing";
  const auto total = [](const Communicator::CommTime& t) { return t.exposed_s + t.hidden_s; };
  const Communicator::CommTime t0 = world.Times();
  Tensor big = Tensor::Zeros({1 << 16}, DType::kF32);
  world.AllReduce(big, ReduceOp::kSum)->Wait();
  const Communicator::CommTime t1 = world.Times();
  EXPECT_GE(t1.exposed_s, t0.exposed_s);
  EXPECT_GE(t1.hidden_s, t0.hidden_s);
  EXPECT_GT(total(t1), total(t0)) << "a finished operation adds its time";
  HandlePtr h = world.AllReduce(Tensor::Zeros({16}, DType::kF32), ReduceOp::kSum);
  while (!h->Test()) std::this_thread::yield();
  const Communicator::CommTime t2 = world.Times();
  EXPECT_EQ(t2.exposed_s, t1.exposed_s) << "nobody waited: nothing was exposed";
  EXPECT_GT(t2.hidden_s, t1.hidden_s);
  std::unique_ptr<Communicator> half = world.Split(world.rank() % 2, world.rank());
  if (half->size() > 1) {
    half->AllReduce(big, ReduceOp::kSum)->Wait();
    EXPECT_GT(total(world.Times()), total(t2)) << "a split group shares the totals";
  }
}

TEST(MpiCommunicatorTest, AllReduceSum) { testing::CheckAllReduceSum(World()); }
TEST(MpiCommunicatorTest, AllReduceMax) { testing::CheckAllReduceMax(World()); }
TEST(MpiCommunicatorTest, ReduceScatter) { testing::CheckReduceScatter(World()); }
TEST(MpiCommunicatorTest, AllGather) { testing::CheckAllGather(World()); }
TEST(MpiCommunicatorTest, AllToAllVWithZeroCounts) { testing::CheckAllToAllV(World()); }
TEST(MpiCommunicatorTest, SendRecv) { testing::CheckSendRecv(World()); }
TEST(MpiCommunicatorTest, Broadcast) { testing::CheckBroadcast(World()); }
TEST(MpiCommunicatorTest, Barrier) { testing::CheckBarrier(World()); }
TEST(MpiCommunicatorTest, ManyOutstandingWaitedOutOfOrder) {
  testing::CheckOutOfOrderWaits(World());
}
TEST(MpiCommunicatorTest, CompletesThroughTestAlone) { testing::CheckTestPolling(World()); }
TEST(MpiCommunicatorTest, SplitGroups) { testing::CheckSplit(World()); }

// Without a progress thread, operations advance in Test(), Wait() and
// Progress() only; results are the same.
TEST(MpiCommunicatorTest, CallerPollsModePassesTheSuite) {
  auto comm = MpiCommunicator::World(
      {.progress = MpiCommunicatorOptions::Progress::kCallerPolls, .wait_timeout_s = 60});
  EXPECT_FALSE(comm->has_progress_thread());
  Tensor t = testing::RankData({4097}, DType::kF32, 77, comm->rank());
  HandlePtr handle = comm->AllReduce(t, ReduceOp::kSum);
  for (int i = 0; i < 10; ++i) comm->Progress();
  handle->Wait();
  EXPECT_LE(
      testing::Mismatch(t, testing::SerialReduce({4097}, DType::kF32, 77, comm->size(), false)),
      testing::SumTolerance(DType::kF32, comm->size()));
  testing::CheckAll(*comm);
}

TEST(SimulatedNetworkTest, OverMpiPassesTheSuite) {
  SimulatedNetwork sim(World().Split(0, World().rank()),
                       {.latency_us = 5, .bandwidth_gb_per_s = 20});
  EXPECT_EQ(sim.name(), "sim(mpi)");
  testing::CheckAll(sim);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Lower bounds only: a loaded machine may take longer than the model, never
// less.
TEST(SimulatedNetworkTest, CompletesNoEarlierThanItsModel) {
  SimulatedNetwork sim(World().Split(0, World().rank()),
                       {.latency_us = 20000, .bandwidth_gb_per_s = 0.1});
  const int n = sim.size();
  const int64_t numel = 250000;  // 1 MB of f32
  const double model = sim.ModelSeconds(sim.AllReduceLinkBytes(numel * 4));
  if (n > 1) {
    EXPECT_DOUBLE_EQ(model, 0.02 + 2.0 * (n - 1) / n * 1e6 / 1e8);
  } else {
    EXPECT_EQ(model, 0);
  }

  Tensor a = testing::RankData({numel}, DType::kF32, 5, sim.rank());
  auto start = std::chrono::steady_clock::now();
  sim.AllReduce(a, ReduceOp::kSum)->Wait();
  EXPECT_GE(SecondsSince(start), model) << "one all-reduce";

  // Two at once share the link: the second ends a model later than the first.
  // (The barrier's modelled alpha ends before `start`.)
  Tensor b = a.Clone();
  sim.Barrier()->Wait();
  start = std::chrono::steady_clock::now();
  HandlePtr first = sim.AllReduce(a, ReduceOp::kMax);
  HandlePtr second = sim.AllReduce(b, ReduceOp::kMax);
  second->Wait();
  EXPECT_GE(SecondsSince(start), 2 * model) << "two all-reduces sharing the link";
  first->Wait();

  // All-gather counts (n-1)/n of its output.
  Tensor out = Tensor::Empty({n * numel}, DType::kF32);
  const double gather_model = sim.ModelSeconds(sim.AllGatherLinkBytes(out.nbytes()));
  start = std::chrono::steady_clock::now();
  sim.AllGather(out, a)->Wait();
  EXPECT_GE(SecondsSince(start), gather_model) << "all-gather";
}

}  // namespace
}  // namespace moe
