// Main of the multi-rank test binaries, run under mpirun. Every rank runs
// every test; a failure on any rank fails the process on every rank (the
// result is all-reduced before MPI_Finalize), so CTest sees it whichever rank
// it was. Rank 0 prints GoogleTest's usual report; the other ranks print only
// their failures, prefixed with their rank.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <memory>

#include "parallel/mpi_communicator.h"
#include "tests/parallel/mpi_test_env.h"

namespace moe::testing {
namespace {

std::unique_ptr<MpiCommunicator> g_world;

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

}  // namespace

MpiCommunicator& World() { return *g_world; }

}  // namespace moe::testing

int main(int argc, char** argv) {
  moe::MpiEnvironment mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.world_rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new moe::testing::RankFailurePrinter(mpi.world_rank()));
  }
  // A test that fails on one rank and skips a collective would leave the
  // others waiting: fail after a minute instead.
  moe::testing::g_world = moe::MpiCommunicator::World({.wait_timeout_s = 60});
  const int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any_failed = failed;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any_failed && !failed) {
    std::fprintf(stderr, "[rank %d] passed here, but a test failed on another rank\n",
                 mpi.world_rank());
  }
  moe::testing::g_world.reset();
  return any_failed;
}
