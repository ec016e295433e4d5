#include "tests/parallel/comm_suite.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/philox.h"
#include "tests/parallel/comm_test_util.h"

namespace moe::testing {
namespace {

std::string Where(const Communicator& comm, const std::string& what) {
  return comm.name() + " rank " + std::to_string(comm.rank()) + "/" + std::to_string(comm.size()) +
         ": " + what;
}

Tensor Concat(const std::vector<Tensor>& parts, const Shape& row_shape, DType dtype) {
  int64_t rows = 0;
  for (const Tensor& p : parts) rows += p.dim(0);
  Shape shape = row_shape;
  shape.insert(shape.begin(), rows);
  Tensor out = Tensor::Empty(shape, dtype);
  int64_t at = 0;
  for (const Tensor& p : parts) {
    if (p.dim(0) > 0) out.Slice(at, at + p.dim(0)).CopyFrom(p);
    at += p.dim(0);
  }
  return out;
}

// All-to-all-v input of rank `source`: its rows for each destination, in order.
struct AllToAllInput {
  std::vector<int64_t> rows;
  Tensor data;
};

AllToAllInput MakeAllToAllInput(uint64_t seed, int n, int source, const Shape& row_shape,
                                DType dtype, bool empty_ranks) {
  AllToAllInput in;
  in.rows = AllToAllRows(seed, n, source, /*max_rows=*/4, empty_ranks);
  Shape shape = row_shape;
  shape.insert(shape.begin(), std::accumulate(in.rows.begin(), in.rows.end(), int64_t{0}));
  in.data = RankData(shape, dtype, seed, source);
  return in;
}

// What rank `me` must receive: from each source, the rows that source sent it.
Tensor ExpectedAllToAll(uint64_t seed, int n, int me, const Shape& row_shape, DType dtype,
                        bool empty_ranks, std::vector<int64_t>* counts) {
  std::vector<Tensor> parts;
  counts->assign(n, 0);
  for (int source = 0; source < n; ++source) {
    const AllToAllInput in = MakeAllToAllInput(seed, n, source, row_shape, dtype, empty_ranks);
    const int64_t begin = std::accumulate(in.rows.begin(), in.rows.begin() + me, int64_t{0});
    parts.push_back(in.data.Slice(begin, begin + in.rows[me]));
    (*counts)[source] = in.rows[me];
  }
  return Concat(parts, row_shape, dtype);
}

}  // namespace

void CheckAllReduceSum(Communicator& comm) {
  const int n = comm.size();
  uint64_t seed = 100;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64}) {
    for (const Shape& shape : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{1001}, Shape{65537}}) {
      ++seed;
      Tensor t = RankData(shape, dtype, seed, comm.rank());
      comm.AllReduce(t, ReduceOp::kSum)->Wait();
      const Tensor ref = SerialReduce(shape, dtype, seed, n, /*max=*/false);
      EXPECT_LE(Mismatch(t, ref), SumTolerance(dtype, n))
          << Where(comm, "AllReduce sum of " + t.Describe());
    }
  }
}

void CheckAllReduceMax(Communicator& comm) {
  uint64_t seed = 200;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64}) {
    for (const Shape& shape : {Shape{1}, Shape{13}, Shape{4099}}) {
      ++seed;
      Tensor t = RankData(shape, dtype, seed, comm.rank());
      comm.AllReduce(t, ReduceOp::kMax)->Wait();
      const Tensor ref = SerialReduce(shape, dtype, seed, comm.size(), /*max=*/true);
      EXPECT_EQ(Mismatch(t, ref), 0) << Where(comm, "AllReduce max of " + t.Describe());
    }
  }
}

void CheckReduceScatter(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  uint64_t seed = 300;
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI64}) {
    for (int64_t block : {1, 13, 4099}) {
      ++seed;
      const Tensor input = RankData({n * block}, dtype, seed, r);
      Tensor output = Tensor::Empty({block}, dtype);
      comm.ReduceScatter(output, input)->Wait();
      const Tensor ref = SerialReduce({n * block}, dtype, seed, n, /*max=*/false)
                             .Slice(r * block, (r + 1) * block);
      EXPECT_LE(Mismatch(output, ref), SumTolerance(dtype, n))
          << Where(comm, "ReduceScatter of " + input.Describe());
    }
  }
}

void CheckAllGather(Communicator& comm) {
  const int n = comm.size();
  uint64_t seed = 400;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI32}) {
    for (int64_t block : {1, 13, 4099}) {
      ++seed;
      const Tensor input = RankData({block}, dtype, seed, comm.rank());
      Tensor output = RankData({n * block}, dtype, seed + 1000, comm.rank());  // not the answer
      comm.AllGather(output, input)->Wait();
      std::vector<Tensor> parts;
      for (int p = 0; p < n; ++p) parts.push_back(RankData({block}, dtype, seed, p));
      EXPECT_EQ(Mismatch(output, Concat(parts, {}, dtype)), 0)
          << Where(comm, "AllGather of " + input.Describe());
    }
  }
}

void CheckAllToAllV(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  struct Case {
    Shape row_shape;
    DType dtype;
    bool empty_ranks;
  };
  uint64_t seed = 500;
  for (const Case& c : {Case{{}, DType::kF32, true}, Case{{3}, DType::kI64, true},
                        Case{{5}, DType::kBF16, false}, Case{{2, 3}, DType::kF64, false}}) {
    ++seed;
    const AllToAllInput in = MakeAllToAllInput(seed, n, r, c.row_shape, c.dtype, c.empty_ranks);
    Tensor output;
    std::vector<int64_t> counts;
    comm.AllToAllV(&output, &counts, in.data, in.rows)->Wait();
    std::vector<int64_t> expected_counts;
    const Tensor expected =
        ExpectedAllToAll(seed, n, r, c.row_shape, c.dtype, c.empty_ranks, &expected_counts);
    const std::string what = "AllToAllV of " + in.data.Describe();
    EXPECT_EQ(counts, expected_counts) << Where(comm, what);
    ASSERT_TRUE(output.defined()) << Where(comm, what);
    EXPECT_EQ(output.shape(), expected.shape()) << Where(comm, what);
    EXPECT_EQ(Mismatch(output, expected), 0) << Where(comm, what);

    // Again into a workspace with room (the output is a view of it) and into
    // one without (a new allocation); the results are the same.
    for (int64_t spare : {int64_t{3}, -expected.dim(0) - 1}) {
      const int64_t rows = std::max<int64_t>(expected.dim(0) + spare, 0);
      Shape ws_shape = c.row_shape;
      ws_shape.insert(ws_shape.begin(), rows);
      const Tensor workspace = Tensor::Empty(ws_shape, c.dtype);
      Tensor again;
      comm.AllToAllV(&again, &counts, in.data, in.rows, workspace)->Wait();
      EXPECT_EQ(counts, expected_counts) << Where(comm, what + " into a workspace");
      EXPECT_EQ(again.shape(), expected.shape()) << Where(comm, what + " into a workspace");
      EXPECT_EQ(Mismatch(again, expected), 0) << Where(comm, what + " into a workspace");
      if (spare > 0 && expected.numel() > 0) {
        EXPECT_EQ(again.raw_data(), workspace.raw_data())
            << Where(comm, what + " did not use a workspace with room");
      }
    }
  }
}

void CheckSendRecv(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  const uint64_t seed = 600;
  // Receives posted before the sends; two tags so that a pair of ranks that
  // are each other's prev and next (n = 2, or n = 1 to itself) still match.
  Tensor from_prev = Tensor::Empty({10 + 3 * prev}, DType::kF32);
  Tensor from_next = Tensor::Empty({5 + next}, DType::kI64);
  HandlePtr recv_prev = comm.Recv(from_prev, prev, /*tag=*/7);
  HandlePtr recv_next = comm.Recv(from_next, next, /*tag=*/9);
  HandlePtr send_next = comm.Send(RankData({10 + 3 * r}, DType::kF32, seed, r), next, 7);
  HandlePtr send_prev = comm.Send(RankData({5 + r}, DType::kI64, seed, r), prev, 9);
  recv_next->Wait();
  send_next->Wait();
  recv_prev->Wait();
  send_prev->Wait();
  EXPECT_EQ(Mismatch(from_prev, RankData({10 + 3 * prev}, DType::kF32, seed, prev)), 0)
      << Where(comm, "Recv from prev");
  EXPECT_EQ(Mismatch(from_next, RankData({5 + next}, DType::kI64, seed, next)), 0)
      << Where(comm, "Recv from next");
}

void CheckBroadcast(Communicator& comm) {
  uint64_t seed = 700;
  for (DType dtype : {DType::kF64, DType::kBF16}) {
    for (int root = 0; root < comm.size(); ++root) {
      ++seed;
      Tensor t = RankData({777}, dtype, comm.rank() == root ? seed : seed + 1000, comm.rank());
      comm.Broadcast(t, root)->Wait();
      EXPECT_EQ(Mismatch(t, RankData({777}, dtype, seed, root)), 0)
          << Where(comm, "Broadcast from " + std::to_string(root));
    }
  }
}

void CheckBarrier(Communicator& comm) {
  HandlePtr first = comm.Barrier();
  HandlePtr second = comm.Barrier();
  second->Wait();  // waited out of order
  first->Wait();
  SUCCEED() << Where(comm, "barriers completed");
}

void CheckOutOfOrderWaits(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  constexpr int kOps = 25;
  std::vector<HandlePtr> handles;
  std::vector<std::function<void()>> checks;
  for (int i = 0; i < kOps; ++i) {
    const uint64_t seed = 800 + i;
    const std::string what = "out-of-order op " + std::to_string(i);
    switch (i % 5) {
      case 0: {
        const Shape shape{100 + 37 * i};
        Tensor t = RankData(shape, DType::kF32, seed, r);
        handles.push_back(comm.AllReduce(t, ReduceOp::kSum));
        checks.push_back([=, &comm] {
          EXPECT_LE(Mismatch(t, SerialReduce(shape, DType::kF32, seed, n, false)),
                    SumTolerance(DType::kF32, n))
              << Where(comm, what);
        });
        break;
      }
      case 1: {
        const int64_t block = 11 + i;
        Tensor out = Tensor::Empty({n * block}, DType::kI32);
        handles.push_back(comm.AllGather(out, RankData({block}, DType::kI32, seed, r)));
        checks.push_back([=, &comm] {
          std::vector<Tensor> parts;
          for (int p = 0; p < n; ++p) parts.push_back(RankData({block}, DType::kI32, seed, p));
          EXPECT_EQ(Mismatch(out, Concat(parts, {}, DType::kI32)), 0) << Where(comm, what);
        });
        break;
      }
      case 2: {
        const bool empty_ranks = i % 2 == 0;
        const AllToAllInput in = MakeAllToAllInput(seed, n, r, {2}, DType::kF32, empty_ranks);
        auto out = std::make_shared<Tensor>();
        auto counts = std::make_shared<std::vector<int64_t>>();
        handles.push_back(comm.AllToAllV(out.get(), counts.get(), in.data, in.rows));
        checks.push_back([=, &comm] {
          std::vector<int64_t> expected_counts;
          const Tensor expected =
              ExpectedAllToAll(seed, n, r, {2}, DType::kF32, empty_ranks, &expected_counts);
          EXPECT_EQ(*counts, expected_counts) << Where(comm, what);
          EXPECT_EQ(Mismatch(*out, expected), 0) << Where(comm, what);
        });
        break;
      }
      case 3: {
        const int root = i % n;
        Tensor t = RankData({50 + i}, DType::kF64, r == root ? seed : seed + 1000, r);
        handles.push_back(comm.Broadcast(t, root));
        checks.push_back([=, &comm] {
          EXPECT_EQ(Mismatch(t, RankData({50 + i}, DType::kF64, seed, root)), 0)
              << Where(comm, what);
        });
        break;
      }
      case 4: {
        const int64_t block = 3 + i;
        Tensor out = Tensor::Empty({block}, DType::kF64);
        handles.push_back(comm.ReduceScatter(out, RankData({n * block}, DType::kF64, seed, r)));
        checks.push_back([=, &comm] {
          const Tensor ref = SerialReduce({n * block}, DType::kF64, seed, n, false)
                                 .Slice(r * block, (r + 1) * block);
          EXPECT_LE(Mismatch(out, ref), SumTolerance(DType::kF64, n)) << Where(comm, what);
        });
        break;
      }
    }
  }
  // A rank-dependent permutation (Fisher-Yates keyed by the rank).
  std::vector<int> order(kOps);
  std::iota(order.begin(), order.end(), 0);
  const Philox philox(900, static_cast<uint64_t>(r));
  for (int i = kOps - 1; i > 0; --i) {
    std::swap(order[i], order[philox.Block(i)[0] % static_cast<uint32_t>(i + 1)]);
  }
  for (int i : order) handles[i]->Wait();
  for (auto& check : checks) check();
}

void CheckTestPolling(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  const uint64_t seed = 1000;
  const Shape shape{50001};
  Tensor t = RankData(shape, DType::kF32, seed, r);
  const AllToAllInput in = MakeAllToAllInput(seed, n, r, {4}, DType::kI32, false);
  Tensor out;
  std::vector<int64_t> counts;
  HandlePtr a = comm.AllReduce(t, ReduceOp::kSum);
  HandlePtr b = comm.AllToAllV(&out, &counts, in.data, in.rows);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool a_done = false, b_done = false;
  while (!(a_done && b_done) && std::chrono::steady_clock::now() < deadline) {
    a_done = a_done || a->Test();
    b_done = b_done || b->Test();
  }
  ASSERT_TRUE(a_done && b_done) << Where(comm, "Test() never reported completion");
  EXPECT_LE(Mismatch(t, SerialReduce(shape, DType::kF32, seed, n, false)),
            SumTolerance(DType::kF32, n))
      << Where(comm, "AllReduce completed by Test()");
  std::vector<int64_t> expected_counts;
  const Tensor expected = ExpectedAllToAll(seed, n, r, {4}, DType::kI32, false, &expected_counts);
  EXPECT_EQ(counts, expected_counts) << Where(comm, "AllToAllV completed by Test()");
  EXPECT_EQ(Mismatch(out, expected), 0) << Where(comm, "AllToAllV completed by Test()");
}

void CheckSplit(Communicator& comm) {
  const int n = comm.size(), r = comm.rank();
  const uint64_t seed = 1100;
  // Groups by parity, ranked in reverse order of the parent rank.
  std::vector<int> members;
  for (int p = n - 1; p >= 0; --p) {
    if (p % 2 == r % 2) members.push_back(p);
  }
  std::unique_ptr<Communicator> parity = comm.Split(r % 2, -r);
  ASSERT_NE(parity, nullptr) << Where(comm, "Split by parity");
  EXPECT_EQ(parity->size(), static_cast<int>(members.size())) << Where(comm, "Split by parity");
  const int expected_rank =
      static_cast<int>(std::find(members.begin(), members.end(), r) - members.begin());
  EXPECT_EQ(parity->rank(), expected_rank) << Where(comm, "Split by parity");

  // The parent and the group both busy at once.
  Tensor on_parent = RankData({333}, DType::kF64, seed, r);
  Tensor on_group = RankData({444}, DType::kF64, seed + 1, r);
  HandlePtr parent_handle = comm.AllReduce(on_parent, ReduceOp::kSum);
  HandlePtr group_handle = parity->AllReduce(on_group, ReduceOp::kSum);
  group_handle->Wait();
  parent_handle->Wait();
  Tensor group_ref = Tensor::Zeros({444}, DType::kF64);
  for (int p : members) {
    const Tensor d = RankData({444}, DType::kF64, seed + 1, p);
    for (int64_t i = 0; i < 444; ++i) group_ref.data<double>()[i] += d.data<double>()[i];
  }
  EXPECT_LE(Mismatch(on_group, group_ref), SumTolerance(DType::kF64, n))
      << Where(comm, "AllReduce on the parity group");
  EXPECT_LE(Mismatch(on_parent, SerialReduce({333}, DType::kF64, seed, n, false)),
            SumTolerance(DType::kF64, n))
      << Where(comm, "AllReduce on the parent beside the group's");

  // Rank 0 left out; the others keep their order.
  std::unique_ptr<Communicator> rest = comm.Split(r == 0 ? Communicator::kNoColor : 0, r);
  if (r == 0) {
    EXPECT_EQ(rest, nullptr) << Where(comm, "Split with kNoColor");
  } else {
    ASSERT_NE(rest, nullptr) << Where(comm, "Split without rank 0");
    EXPECT_EQ(rest->size(), n - 1);
    EXPECT_EQ(rest->rank(), r - 1);
    Tensor out = Tensor::Empty({(n - 1) * 5}, DType::kI64);
    rest->AllGather(out, RankData({5}, DType::kI64, seed + 2, r))->Wait();
    std::vector<Tensor> parts;
    for (int p = 1; p < n; ++p) parts.push_back(RankData({5}, DType::kI64, seed + 2, p));
    EXPECT_EQ(Mismatch(out, Concat(parts, {}, DType::kI64)), 0)
        << Where(comm, "AllGather on the group without rank 0");
  }

  // A split of a split is a communicator like any other.
  std::unique_ptr<Communicator> nested = parity->Split(0, parity->rank());
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->size(), parity->size());
  CheckAllGather(*nested);
}

void CheckAll(Communicator& comm) {
  CheckAllReduceSum(comm);
  CheckAllReduceMax(comm);
  CheckReduceScatter(comm);
  CheckAllGather(comm);
  CheckAllToAllV(comm);
  CheckSendRecv(comm);
  CheckBroadcast(comm);
  CheckBarrier(comm);
  CheckOutOfOrderWaits(comm);
  CheckTestPolling(comm);
  CheckSplit(comm);
}

}  // namespace moe::testing
