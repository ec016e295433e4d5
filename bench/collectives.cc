// Collectives: our MpiCommunicator against raw OpenMPI calls on the same
// buffers, and how much of an all-reduce a compute loop hides when the
// all-reduce is issued asynchronously.
//
//   mpirun -n 2 collectives [--repeats=N]
//
// Bandwidth, as nccl-tests defines it (doc/PERFORMANCE.md there), for S bytes
// per rank (the all-gather's output, the reduce-scatter's input) and time t:
//   algbw = S / t
//   busbw = algbw * 2(n-1)/n   all-reduce
//   busbw = algbw * (n-1)/n    all-gather, reduce-scatter, all-to-all
// Busbw is comparable across rank counts: it is what each link carried.
// Each time is the slowest rank's, median of `repeats` samples (with the
// spread min..max); ours and raw alternate so that load hits both alike.
//
// Overlap: T_comm = issue + wait alone, T_comp = the compute loop alone,
// T_both = issue, compute, wait. hidden = (T_comm + T_comp - T_both) / T_comm,
// 1 when the collective ran entirely behind the compute. Three ways:
//   thread    progress thread (the default)
//   polls     no thread; the compute loop calls Progress() every chunk
//   none      no thread and no Progress(): MPI advances only in Wait()
//   thread, 1 Gbit/s link   the progress thread under a SimulatedNetwork of
//             10 us and 1 Gbit/s: the wire time of a NIC, which moves bytes
//             without the CPU. On shared memory the "transfer" is copies and
//             reductions done by the same cores as the compute loop, so it
//             can hide only in the compute's gaps; a link whose wire time
//             dominates shows what the progress mechanism itself hides.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/simulated_network.h"

namespace moe {
namespace {

struct Stats {
  double median = 0, min = 0, max = 0;
};

Stats Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

// Seconds of body() on the slowest rank, after a barrier.
double TimeAll(const std::function<void()>& body) {
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = std::chrono::steady_clock::now();
  body();
  double local = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double slowest = 0;
  MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return slowest;
}

// Alternates the bodies `repeats` times after one warm-up each.
std::vector<Stats> Compare(const std::vector<std::function<void()>>& bodies, int repeats) {
  std::vector<std::vector<double>> samples(bodies.size());
  for (const auto& body : bodies) TimeAll(body);
  for (int r = 0; r < repeats; ++r) {
    for (size_t i = 0; i < bodies.size(); ++i) samples[i].push_back(TimeAll(bodies[i]));
  }
  std::vector<Stats> out;
  for (auto& s : samples) out.push_back(Summarize(s));
  return out;
}

void Fill(Tensor& t) {
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(i % 17) * 0.25f;
}

// A compute-bound loop (a dependent FMA chain per lane over an L1-resident
// array), in chunks; `between` runs after every chunk.
volatile float g_sink;
void Compute(int64_t chunks, const std::function<void()>& between) {
  float acc[64];
  for (int i = 0; i < 64; ++i) acc[i] = 1.0f + i * 1e-3f;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int it = 0; it < 400; ++it) {
      for (int i = 0; i < 64; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
    }
    if (between) between();
  }
  g_sink = acc[7];
}

void BandwidthTable(MpiCommunicator& comm, int repeats) {
  const int n = comm.size();
  const double bus_ar = 2.0 * (n - 1) / n, bus = static_cast<double>(n - 1) / n;
  if (comm.rank() == 0) {
    std::printf(
        "\n| collective | bytes | ours busbw GB/s | raw MPI_I* busbw GB/s | ratio | "
        "raw blocking busbw GB/s | ours/blocking |\n|---|---|---|---|---|---|---|\n");
  }
  for (int64_t numel : {int64_t{1} << 10, int64_t{1} << 16, int64_t{1} << 20, int64_t{1} << 23}) {
    const int iters = numel >= (1 << 20) ? 4 : 50;
    const int count = static_cast<int>(numel);
    Tensor data = Tensor::Empty({numel}, DType::kF32);
    Fill(data);
    Tensor big = Tensor::Empty({numel * n}, DType::kF32);
    Fill(big);
    Tensor block = Tensor::Empty({numel}, DType::kF32);
    float* d = data.data<float>();
    float* b = big.data<float>();
    float* k = block.data<float>();
    std::vector<int> counts(n, count / n), displs(n);
    for (int p = 0; p < n; ++p) displs[p] = p * (count / n);
    const std::vector<int64_t> rows(n, numel / n);
    Tensor a2a_in = data.Slice(0, (numel / n) * n);
    Tensor a2a_out;
    std::vector<int64_t> recv_rows;
    auto raw_wait = [](MPI_Request r) { MPI_Wait(&r, MPI_STATUS_IGNORE); };

    struct Row {
      const char* name;
      double bytes, factor;
      std::function<void()> ours, raw, blocking;
    };
    std::vector<Row> table = {
        {"all-reduce", numel * 4.0, bus_ar, [&] { comm.AllReduce(data, ReduceOp::kSum)->Wait(); },
         [&] {
           MPI_Request r;
           MPI_Iallreduce(MPI_IN_PLACE, d, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
           raw_wait(r);
         },
         [&] { MPI_Allreduce(MPI_IN_PLACE, d, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }},
        {"all-gather", numel * 4.0 * n, bus, [&] { comm.AllGather(big, block)->Wait(); },
         [&] {
           MPI_Request r;
           MPI_Iallgather(k, count, MPI_FLOAT, b, count, MPI_FLOAT, MPI_COMM_WORLD, &r);
           raw_wait(r);
         },
         [&] { MPI_Allgather(k, count, MPI_FLOAT, b, count, MPI_FLOAT, MPI_COMM_WORLD); }},
        {"reduce-scatter", numel * 4.0 * n, bus, [&] { comm.ReduceScatter(block, big)->Wait(); },
         [&] {
           MPI_Request r;
           MPI_Ireduce_scatter_block(b, k, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r);
           raw_wait(r);
         },
         [&] { MPI_Reduce_scatter_block(b, k, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); }},
        // Ours exchanges the counts first; raw MPI is given them. Both write
        // into the same preallocated buffer (ours as its workspace).
        {"all-to-all-v", (numel / n) * n * 4.0, bus,
         [&] { comm.AllToAllV(&a2a_out, &recv_rows, a2a_in, rows, block)->Wait(); },
         [&] {
           MPI_Request r;
           MPI_Ialltoallv(d, counts.data(), displs.data(), MPI_FLOAT, k, counts.data(),
                          displs.data(), MPI_FLOAT, MPI_COMM_WORLD, &r);
           raw_wait(r);
         },
         [&] {
           MPI_Alltoallv(d, counts.data(), displs.data(), MPI_FLOAT, k, counts.data(),
                         displs.data(), MPI_FLOAT, MPI_COMM_WORLD);
         }},
    };
    for (const Row& row : table) {
      auto repeat = [iters](const std::function<void()>& f) {
        return [iters, f] {
          for (int i = 0; i < iters; ++i) f();
        };
      };
      const std::vector<Stats> s =
          Compare({repeat(row.ours), repeat(row.raw), repeat(row.blocking)}, repeats);
      auto busbw = [&](double seconds) { return row.bytes * iters / seconds * row.factor / 1e9; };
      if (comm.rank() == 0) {
        std::printf("| %s | %.0f | %.3f [%.3f..%.3f] | %.3f | %.2f | %.3f | %.2f |\n", row.name,
                    row.bytes, busbw(s[0].median), busbw(s[0].max), busbw(s[0].min),
                    busbw(s[1].median), s[1].median / s[0].median, busbw(s[2].median),
                    s[2].median / s[0].median);
      }
    }
  }
}

void OverlapTable(int repeats) {
  using Progress = MpiCommunicatorOptions::Progress;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    std::printf(
        "\n| mode | all-reduce bytes | T_comm ms | T_comp ms | T_both ms | hidden "
        "[min..max] |\n|---|---|---|---|---|---|\n");
  }
  struct Mode {
    const char* name;
    Progress progress;
    bool poll;
    double sim_gbit_per_s = 0;  // 0: no simulated link
  };
  for (const Mode& mode :
       {Mode{"thread", Progress::kThread, false}, Mode{"polls", Progress::kCallerPolls, true},
        Mode{"none", Progress::kCallerPolls, false},
        Mode{"thread, 1 Gbit/s link", Progress::kThread, false, 1.0}}) {
    std::shared_ptr<Communicator> comm = MpiCommunicator::World({.progress = mode.progress});
    if (mode.sim_gbit_per_s > 0) {
      comm = std::make_shared<SimulatedNetwork>(
          comm,
          SimulatedNetworkOptions{.latency_us = 10, .bandwidth_gb_per_s = mode.sim_gbit_per_s / 8});
    }
    for (int64_t numel : {int64_t{1} << 18, int64_t{1} << 22}) {
      Tensor data = Tensor::Empty({numel}, DType::kF32);
      Fill(data);
      std::function<void()> between;
      if (mode.poll) between = [&] { comm->Progress(); };
      const double t_comm_est = TimeAll([&] { comm->AllReduce(data, ReduceOp::kSum)->Wait(); });
      // Calibrate the compute loop to about the collective's time.
      const double t_chunk = TimeAll([&] { Compute(100, between); }) / 100;
      const int64_t chunks = std::max<int64_t>(1, static_cast<int64_t>(t_comm_est / t_chunk));
      std::vector<double> comm_s, comp_s, both_s, hidden;
      for (int r = 0; r < repeats; ++r) {
        const double tc = TimeAll([&] { comm->AllReduce(data, ReduceOp::kSum)->Wait(); });
        const double tp = TimeAll([&] { Compute(chunks, between); });
        const double tb = TimeAll([&] {
          HandlePtr h = comm->AllReduce(data, ReduceOp::kSum);
          Compute(chunks, between);
          h->Wait();
        });
        comm_s.push_back(tc);
        comp_s.push_back(tp);
        both_s.push_back(tb);
        hidden.push_back(std::clamp((tc + tp - tb) / tc, 0.0, 1.0));
      }
      const Stats h = Summarize(hidden);
      if (rank == 0) {
        std::printf("| %s | %lld | %.2f | %.2f | %.2f | %.2f [%.2f..%.2f] |\n", mode.name,
                    static_cast<long long>(numel * 4), Summarize(comm_s).median * 1e3,
                    Summarize(comp_s).median * 1e3, Summarize(both_s).median * 1e3, h.median, h.min,
                    h.max);
      }
    }
  }
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::MpiEnvironment mpi(&argc, &argv);
  int repeats = 7;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--repeats=", 10) == 0) repeats = std::atoi(argv[i] + 10);
  }
  {
    auto comm = moe::MpiCommunicator::World();
    if (comm->rank() == 0) {
      std::printf("collectives: %d ranks, f32, median of %d (slowest rank each)\n", comm->size(),
                  repeats);
    }
    moe::BandwidthTable(*comm, repeats);
  }
  moe::OverlapTable(repeats);
  return 0;
}
