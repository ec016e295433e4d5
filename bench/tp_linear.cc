// bench/tp_linear: how much of a column-parallel Linear's backward dx
// all-reduce ColumnParallelLinear::Backward hides behind its weight-gradient
// GEMM (Megatron's asynchronous TP gradient all-reduce).
//
//   mpirun -n 2 bin/tp_linear [--repeats=N]     (OMP_NUM_THREADS=1)
//
// TP = the world. The all-reduce runs on a SimulatedNetwork whose bandwidth
// is set so that the modelled all-reduce of dx takes as long as the measured
// weight-gradient GEMM: the case where overlap matters most. Per shape it
// prints the serial backward (dx GEMM, all-reduce waited, dW GEMM), the
// layer's backward, both parts alone, and
//   hidden = (serial - layer) / min(all-reduce, dW GEMM),
// the fraction of the shorter part that disappeared (1 = fully overlapped).
// Times are medians over ranks' slowest (the max over ranks of each sample).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "core/philox.h"
#include "parallel/mpi_communicator.h"
#include "parallel/simulated_network.h"
#include "parallel/tensor_parallel/column_parallel_linear.h"
#include "parallel/tensor_parallel/local_linear.h"

namespace moe {
namespace {

// Seconds of body() on the slowest rank.
double TimeAll(Communicator& comm, const std::function<void()>& body) {
  comm.Barrier()->Wait();
  const auto start = std::chrono::steady_clock::now();
  body();
  Tensor t = Tensor::Empty({1}, DType::kF64);
  t.data<double>()[0] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  comm.AllReduceSync(t, ReduceOp::kMax);
  return t.data<double>()[0];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Run(std::shared_ptr<Communicator> world, int64_t tokens, int64_t in, int64_t out,
         int repeats) {
  const int rank = world->rank();
  ColumnParallelLinear layer("proj", in, out, world.get(), /*sequence_parallel=*/false);
  InitNormal(&layer.weight().value, layer.weight().slice, 1, 1, 0.0, 0.02);
  Tensor x = Tensor::Empty({tokens, in}, DType::kF32);
  Tensor dy = Tensor::Empty({tokens, layer.local_out_features()}, DType::kF32);
  InitNormal(&x, ShardSlice::Whole(x.shape()), 1, 2, 0.0, 1.0);
  InitNormal(&dy, ShardSlice::Whole(dy.shape()), 1, 3 + rank, 0.0, 1.0);
  ColumnParallelLinear::Saved saved;
  layer.Forward(x, &saved);
  Parameter& w = layer.weight();

  // Calibrate: the network's all-reduce of dx lasts one weight-gradient GEMM.
  auto wgrad = [&] { LocalLinearWeightGrad("bench", dy, x, &w.grad); };
  std::vector<double> t_wgrad_cal;
  for (int i = 0; i < 3; ++i) t_wgrad_cal.push_back(TimeAll(*world, wgrad));
  const double bytes = 2.0 * (world->size() - 1) / world->size() * tokens * in * 4;
  SimulatedNetwork net(world,
                       {.latency_us = 0, .bandwidth_gb_per_s = bytes / Median(t_wgrad_cal) / 1e9});
  ColumnParallelLinear sim_layer("proj", in, out, &net, false);
  sim_layer.weight().value.CopyFrom(w.value);

  Tensor dx = Tensor::Empty({tokens, in}, DType::kF32);
  auto serial = [&] {
    LocalLinearInputGrad("bench", dy, w.value, false, &dx);
    net.AllReduce(dx, ReduceOp::kSum)->Wait();
    wgrad();
  };
  auto overlapped = [&] { sim_layer.Backward(dy, saved); };
  auto comm_only = [&] { net.AllReduce(dx, ReduceOp::kSum)->Wait(); };
  std::vector<double> t_serial, t_layer, t_comm, t_wgrad, hidden;
  for (int r = 0; r < repeats + 1; ++r) {
    const double s = TimeAll(*world, serial), l = TimeAll(*world, overlapped);
    const double c = TimeAll(*world, comm_only), g = TimeAll(*world, wgrad);
    if (r == 0) continue;  // warm-up
    t_serial.push_back(s);
    t_layer.push_back(l);
    t_comm.push_back(c);
    t_wgrad.push_back(g);
    hidden.push_back(std::clamp((s - l) / std::min(c, g), 0.0, 1.0));
  }
  if (rank == 0) {
    std::printf("| %lld x %lld -> %lld | %.1f | %.1f | %.1f | %.1f | %.2f [%.2f..%.2f] |\n",
                static_cast<long long>(tokens), static_cast<long long>(in),
                static_cast<long long>(out), Median(t_serial) * 1e3, Median(t_layer) * 1e3,
                Median(t_comm) * 1e3, Median(t_wgrad) * 1e3, Median(hidden),
                *std::min_element(hidden.begin(), hidden.end()),
                *std::max_element(hidden.begin(), hidden.end()));
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
    std::shared_ptr<moe::Communicator> world = moe::MpiCommunicator::World();
    if (world->rank() == 0) {
      std::printf(
          "tp_linear: ColumnParallelLinear backward, TP = %d, f32, median of %d\n\n"
          "| tokens x in -> out | serial ms | layer ms | all-reduce ms | dW GEMM ms | hidden "
          "[min..max] |\n|---|---|---|---|---|---|\n",
          world->size(), repeats);
    }
    moe::Run(world, 512, 512, 1024, repeats);
    moe::Run(world, 1024, 1024, 2048, repeats);
  }
  return 0;
}
