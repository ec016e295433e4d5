// One MoE layer (moe/moe_layer.h: Mixtral's sparse MoE block, dropless,
// all-to-all dispatcher) forward + backward on the CPU in fp32, and where its
// time goes. The PyTorch peer is timed by moe_layer_vs_pytorch.py, which runs
// this binary.
//
//   moe_layer_bench [--config=small|large|all|tiny] [--warmup=N] [--repeats=N]
//                   [--ep=N] [--json] [--serve[=PATH]]
//   mpirun -n 2 moe_layer_bench --ep=2 ...      (expert parallelism over MPI)
//
// --serve[=PATH] (one config): set up and warm up, then run one repeat per
// line read on stdin (or, every rank, on PATH.<rank>, a FIFO the harness
// made: mpirun gives stdin to rank 0 only), answering each with
// {"layer_s": ...}; at end of input print the summary. The PyTorch harness
// uses it to alternate with its own layer repeat by repeat, so that both
// sides see the same load on a shared machine.
//
// Threads: OMP_NUM_THREADS (OpenBLAS is the OpenMP build, so it follows too).
// With --ep=N each of the N ranks holds E / N experts and routes tokens / N
// of the config's tokens, so the layer does the same total work as on one
// rank; times are the slowest rank's (layer) or the mean over ranks (phases).
//
// Each repeat times, one after the other so that load from other processes
// hits them alike:
//   layer   MoeLayer::Forward + MoeLayer::Backward (no router losses): the
//           headline number.
//   phases  the same calls the layer makes, in the same order (a copy of the
//           bodies of MoeLayer::Forward / Backward for a dropless layer), each
//           one timed. Checked against the layer's y and dx before timing, so
//           a change to moe_layer.cc that this copy misses fails loudly.
//   apart   the pieces below that the layer's calls mix, and a 2048^3 sgemm
//           (this machine's rate under the load of the moment).
// The calls fall into:
//   routing      Router::Forward, Router::Backward
//   dispatch     the eight Start/Finish calls of the token dispatcher; with
//                one rank they are the permutation alone (gather, weighted
//                scatter-add, d weights). With EP > 1 they also hold the
//                all-to-alls: then "permutation" is the same local work timed
//                apart (BuildPermutation, PermuteRows x2, UnpermuteSum x2,
//                RowDots and four row copies standing for the sorts by local
//                expert) and "communication" = dispatch - permutation.
//   experts      GroupedExperts::ForwardRows + BackwardRows: 9 GEMMs per
//                expert plus SwiGLU (forward, recompute, backward); the SwiGLU
//                part is timed apart on the same [rows, I] sizes.
//   other        the rest of the pass (the routed-token count, dx += the
//                router's dx, moving the saved tensors).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/ops/cpu/swiglu.h"
#include "core/philox.h"
#include "moe/moe_layer.h"
#include "parallel/communicator.h"
#ifdef MOE_WITH_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace moe {
namespace {

struct LayerConfig {
  const char* name;
  int64_t hidden, ffn, experts, top_k, tokens;
};

// Mixtral's shape ratios (ffn = 3.5 x hidden, 8 experts, top-2). Kept in sync
// with CONFIGS in moe_layer_vs_pytorch.py. "tiny" is the CTest smoke run.
const std::vector<LayerConfig> kConfigs = {
    {"small", 256, 896, 8, 2, 1024},
    {"large", 1024, 3584, 8, 2, 2048},
    {"tiny", 32, 48, 8, 2, 64},
};

// Where a call of the layer belongs in the split.
enum class Phase { kRouting, kDispatch, kExperts, kOther };

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Times the calls of one pass, in order; each call is named where it is made.
class CallTimer {
 public:
  struct Call {
    const char* name;
    Phase phase;
    double seconds;
  };

  template <typename F>
  auto operator()(const char* name, Phase phase, F&& body) {
    const auto start = std::chrono::steady_clock::now();
    if constexpr (std::is_void_v<decltype(body())>) {
      body();
      calls_.push_back({name, phase, Seconds(start)});
    } else {
      auto result = body();
      calls_.push_back({name, phase, Seconds(start)});
      return result;
    }
  }
  const std::vector<Call>& calls() const { return calls_; }

 private:
  std::vector<Call> calls_;
};

// What the phases pass leaves for the pieces timed apart.
struct PassData {
  Tensor y, dx;
  Tensor ids_TK, weights_TK;
  Tensor rows_RH;  // the experts' rows (received, grouped by local expert)
  Tensor out_RH;   // expert outputs in the order of the local permutation
  std::vector<int64_t> expert_offsets;
};

// MoeLayer::Forward then MoeLayer::Backward (moe/moe_layer.cc) for a dropless
// layer on a [T, H] input with no router losses, call by call.
PassData PhasesPass(MoeLayer& layer, const Tensor& x_TH, const Tensor& dy_TH, CallTimer* time) {
  const TokenDispatcher& dispatcher = layer.dispatcher();
  MoeLayer::Saved saved;
  Routing routing = (*time)("router_forward", Phase::kRouting,
                            [&] { return layer.router().Forward(x_TH, &saved.router); });
  const Tensor ids_TK = routing.ids_TK;
  (*time)("count_tokens", Phase::kOther, [&] {
    std::vector<double> tokens_E(static_cast<size_t>(layer.options().num_experts), 0.0);
    const int32_t* id = ids_TK.data<int32_t>();
    for (int64_t p = 0; p < ids_TK.numel(); ++p) {
      if (id[p] != kUnrouted) tokens_E[id[p]] += 1;
    }
  });
  TokenDispatcher::State& state = saved.dispatch;
  (*time)("start_dispatch", Phase::kDispatch, [&] {
    dispatcher.StartDispatch(x_TH, ids_TK, routing.weights_TK, /*pad_capacity=*/0, &state);
  });
  ExpertInput in = (*time)("finish_dispatch", Phase::kDispatch,
                           [&] { return dispatcher.FinishDispatch(&state); });
  const Tensor expert_out = (*time)("experts_forward", Phase::kExperts, [&] {
    return layer.experts().ForwardRows(in.rows_RH, in.expert_offsets, &saved.experts);
  });
  (*time)("start_combine", Phase::kDispatch, [&] { dispatcher.StartCombine(expert_out, &state); });
  PassData data;
  data.y =
      (*time)("finish_combine", Phase::kDispatch, [&] { return dispatcher.FinishCombine(&state); });
  saved.rows_RH = std::move(in.rows_RH);
  saved.expert_offsets = std::move(in.expert_offsets);

  (*time)("start_combine_backward", Phase::kDispatch,
          [&] { dispatcher.StartCombineBackward(dy_TH, state); });
  Tensor dweights_TK;
  const Tensor dout_RH = (*time)("finish_combine_backward", Phase::kDispatch, [&] {
    return dispatcher.FinishCombineBackward(state, &dweights_TK);
  });
  const Tensor drows_RH = (*time)("experts_backward", Phase::kExperts, [&] {
    return layer.experts().BackwardRows(dout_RH, saved.rows_RH, saved.expert_offsets,
                                        saved.experts);
  });
  (*time)("start_dispatch_backward", Phase::kDispatch,
          [&] { dispatcher.StartDispatchBackward(drows_RH, state); });
  data.dx = (*time)("router_backward", Phase::kRouting, [&] {
    return layer.router().Backward(dweights_TK, RouterLossGrads{}, saved.router);
  });
  const Tensor dx_back = (*time)("finish_dispatch_backward", Phase::kDispatch,
                                 [&] { return dispatcher.FinishDispatchBackward(state); });
  (*time)("add_dx", Phase::kOther, [&] {
    const float* a = dx_back.data<float>();
    float* b = data.dx.data<float>();
    const int64_t n = dx_back.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) b[i] += a[i];
  });
  data.ids_TK = ids_TK;
  data.weights_TK = routing.weights_TK;
  data.rows_RH = saved.rows_RH;
  data.out_RH = state.out_RH;
  data.expert_offsets = saved.expert_offsets;
  return data;
}

// The dispatcher's local work without its communication (see the top).
double LocalPermutationSeconds(const Tensor& x_TH, const Tensor& dy_TH, const PassData& d,
                               int64_t experts, int ep) {
  const auto start = std::chrono::steady_clock::now();
  const Permutation p = BuildPermutation(d.ids_TK, experts);
  Tensor rows = PermuteRows(x_TH, p);
  if (ep > 1) rows = d.rows_RH.Clone();  // sort by local expert
  if (ep > 1) rows = d.rows_RH.Clone();  // and back, for the combine
  Tensor y = UnpermuteSum(d.out_RH, p, d.weights_TK);
  Tensor drows = PermuteRows(dy_TH, p, d.weights_TK);
  Tensor dweights = RowDots(dy_TH, d.out_RH, p);
  if (ep > 1) rows = d.rows_RH.Clone();  // backward: sort, unsort
  if (ep > 1) rows = d.rows_RH.Clone();
  // d.out_RH stands for the returned d rows: same shape and order.
  Tensor dx = UnpermuteSum(d.out_RH, p);
  return Seconds(start);
}

// SwiGLU as the experts run it on [rows, I]: forward, the backward's
// recompute, backward; on buffers of its own, allocated once.
class SwigluTimer {
 public:
  SwigluTimer(int64_t rows, int64_t inter) : n_(rows * inter) {
    const Shape shape = {rows, inter};
    for (Tensor* t : {&gate_, &up_, &a_, &b_, &c_}) *t = Tensor::Empty(shape, DType::kF32);
    InitNormal(&gate_, ShardSlice::Whole(shape), 5, 0, 0.0, 1.0);
    InitNormal(&up_, ShardSlice::Whole(shape), 5, 1, 0.0, 1.0);
    Run();  // touches every page
  }
  double Run() {
    float *a = a_.data<float>(), *b = b_.data<float>(), *c = c_.data<float>();
    const float *gate = gate_.data<float>(), *up = up_.data<float>();
    const auto start = std::chrono::steady_clock::now();
    cpu::SwigluForward(a, gate, up, n_);
    cpu::SwigluForward(a, gate, up, n_);
    cpu::SwigluBackward(b, c, a, gate, up, n_);
    return Seconds(start);
  }

 private:
  int64_t n_;
  Tensor gate_, up_, a_, b_, c_;
};

// This machine's sgemm rate: a square 2048 sgemm on every thread of the
// rank, timed once per repeat beside the layer so that it sees the same load.
class SgemmRate {
 public:
  SgemmRate() : a_(Tensor::Empty({kN, kN}, DType::kF32)), c_(Tensor::Empty({kN, kN}, DType::kF32)) {
    InitNormal(&a_, ShardSlice::Whole(a_.shape()), 1, 7, 0.0, 1.0);
    Run();  // warm-up
  }
  // GFLOP/s of one call.
  double Run() {
    const auto start = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, kN, kN, kN, 1.0f, a_.data<float>(), kN,
                a_.data<float>(), kN, 0.0f, c_.data<float>(), kN);
    return 2.0 * kN * kN * kN / Seconds(start) / 1e9;
  }

 private:
  static constexpr int kN = 2048;
  Tensor a_, c_;
};

double MaxRelDiff(const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.numel() == b.numel())
      << "moe_layer_bench: " << a.Describe() << " vs " << b.Describe();
  double diff = 0, scale = 0;
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(pa[i] - pb[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(pb[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Element-wise over ranks: max (or the mean) of `values`, in place.
void ReduceOverRanks(Communicator* ep, std::vector<double>* values, bool mean) {
  if (ep == nullptr) return;
  Tensor t = Tensor::Empty({static_cast<int64_t>(values->size())}, DType::kF64);
  std::copy(values->begin(), values->end(), t.data<double>());
  ep->AllReduceSync(t, mean ? ReduceOp::kSum : ReduceOp::kMax);
  for (size_t i = 0; i < values->size(); ++i) {
    (*values)[i] = t.data<double>()[i] / (mean ? ep->size() : 1);
  }
}

void Barrier(Communicator* ep) {
  if (ep != nullptr) ep->Barrier()->Wait();
}

struct Result {
  std::vector<double> layer_s;  // per repeat, slowest rank
  // Per repeat, mean over ranks: the pass, the pieces timed apart, the sgemm rate.
  std::vector<double> pass_s, permutation_s, swiglu_s, sgemm_gflops;
  std::vector<std::vector<double>> call_s;  // [repeat][call]
  std::vector<CallTimer::Call> calls;       // names and phases, in order
  double y_diff = 0, dx_diff = 0;
  int64_t rows = 0, min_expert_rows = 0, max_expert_rows = 0;  // rank 0's
};

// One config's layer, its inputs and its samples.
class LayerBench {
 public:
  // Builds the layer and checks PhasesPass against it.
  LayerBench(const LayerConfig& c, Communicator* ep)
      : c_(c),
        ep_(ep),
        ep_size_(ep == nullptr ? 1 : ep->size()),
        layer_("model.layers.0.block_sparse_moe", Options(c), DType::kF32, Device::kCpu, ep) {
    const int rank = ep == nullptr ? 0 : ep->rank();
    MOE_CHECK(c.tokens % ep_size_ == 0)
        << "moe_layer_bench: --ep=" << ep_size_ << " must divide the " << c.tokens
        << " tokens of config " << c.name;
    // Hugging Face's initializer_range (0.02) everywhere, as the PyTorch peer.
    uint64_t stream = 0;
    for (Parameter* p : layer_.Parameters()) {
      InitNormal(&p->value, ShardSlice::Whole(p->value.shape()), 1234 + rank, stream++, 0.0, 0.02);
    }
    const int64_t tokens = c.tokens / ep_size_;
    x_ = Tensor::Empty({tokens, c.hidden}, DType::kF32);
    dy_ = Tensor::Empty({tokens, c.hidden}, DType::kF32);
    InitNormal(&x_, ShardSlice::Whole(x_.shape()), 77, 2 * rank, 0.0, 1.0);
    InitNormal(&dy_, ShardSlice::Whole(dy_.shape()), 77, 2 * rank + 1, 0.0, 1.0);

    const auto [y, dx] = LayerPass();
    CallTimer time;
    const PassData d = PhasesPass(layer_, x_, dy_, &time);
    r_.calls = time.calls();
    r_.y_diff = MaxRelDiff(d.y, y);
    r_.dx_diff = MaxRelDiff(d.dx, dx);
    MOE_CHECK(r_.y_diff <= 1e-6 && r_.dx_diff <= 1e-6)
        << "moe_layer_bench: the timed copy of MoeLayer::Forward/Backward no longer matches "
           "moe/moe_layer.cc (relative difference y "
        << r_.y_diff << ", dx " << r_.dx_diff << "): update PhasesPass";
    r_.rows = d.rows_RH.dim(0);
    r_.min_expert_rows = r_.rows;
    for (size_t e = 0; e + 1 < d.expert_offsets.size(); ++e) {
      const int64_t n = d.expert_offsets[e + 1] - d.expert_offsets[e];
      r_.min_expert_rows = std::min(r_.min_expert_rows, n);
      r_.max_expert_rows = std::max(r_.max_expert_rows, n);
    }
    swiglu_ = std::make_unique<SwigluTimer>(r_.rows, c.ffn);
  }

  void Warmup() {
    LayerPass();
    CallTimer time;
    PhasesPass(layer_, x_, dy_, &time);
  }

  // The layer, then the phases pass (the two alternate, so that load hits
  // both alike); returns the layer's seconds (slowest rank).
  double Repeat() {
    Barrier(ep_);
    auto start = std::chrono::steady_clock::now();
    LayerPass();
    std::vector<double> layer_s = {Seconds(start)};
    ReduceOverRanks(ep_, &layer_s, /*mean=*/false);
    r_.layer_s.push_back(layer_s[0]);

    Barrier(ep_);
    CallTimer time;
    start = std::chrono::steady_clock::now();
    const PassData d = PhasesPass(layer_, x_, dy_, &time);
    const double pass_s = Seconds(start);
    // Timed apart, outside the pass.
    const double permutation_s = LocalPermutationSeconds(x_, dy_, d, c_.experts, ep_size_);
    const double swiglu_s = swiglu_->Run();
    Barrier(ep_);
    std::vector<double> v = {pass_s, permutation_s, swiglu_s, sgemm_.Run()};
    for (const CallTimer::Call& call : time.calls()) v.push_back(call.seconds);
    ReduceOverRanks(ep_, &v, /*mean=*/true);
    r_.pass_s.push_back(v[0]);
    r_.permutation_s.push_back(v[1]);
    r_.swiglu_s.push_back(v[2]);
    r_.sgemm_gflops.push_back(v[3]);
    r_.call_s.emplace_back(v.begin() + 4, v.end());
    return layer_s[0];
  }

  const Result& result() const { return r_; }

 private:
  static MoeOptions Options(const LayerConfig& c) {
    MoeOptions options;
    options.hidden_size = c.hidden;
    options.intermediate_size = c.ffn;
    options.num_experts = c.experts;
    options.top_k = c.top_k;
    return options;
  }

  std::pair<Tensor, Tensor> LayerPass() {
    MoeLayer::Saved saved;
    MoeLayer::Output out = layer_.Forward(x_, &saved);
    Tensor dx = layer_.Backward(dy_, RouterLossGrads{}, saved);
    return {out.y, dx};
  }

  LayerConfig c_;
  Communicator* ep_;
  int ep_size_;
  MoeLayer layer_;
  Tensor x_, dy_;
  SgemmRate sgemm_;
  std::unique_ptr<SwigluTimer> swiglu_;
  Result r_;
};

// The split of the layer's time: each phase per repeat, then its median.
struct Split {
  double routing = 0, dispatch = 0, permutation = 0, communication = 0, experts = 0, other = 0;
  double swiglu = 0, expert_gemm = 0;
  double total() const { return routing + dispatch + experts + other; }
};

Split SplitOf(const Result& r, int ep_size) {
  std::vector<double> routing, dispatch, permutation, experts, swiglu, other;
  for (size_t i = 0; i < r.call_s.size(); ++i) {
    double by_phase[4] = {0, 0, 0, 0};
    for (size_t k = 0; k < r.calls.size(); ++k) {
      by_phase[static_cast<int>(r.calls[k].phase)] += r.call_s[i][k];
    }
    const double calls = by_phase[0] + by_phase[1] + by_phase[2] + by_phase[3];
    routing.push_back(by_phase[static_cast<int>(Phase::kRouting)]);
    dispatch.push_back(by_phase[static_cast<int>(Phase::kDispatch)]);
    experts.push_back(by_phase[static_cast<int>(Phase::kExperts)]);
    swiglu.push_back(std::min(r.swiglu_s[i], experts.back()));
    // The untimed gaps between calls count as other.
    other.push_back(by_phase[static_cast<int>(Phase::kOther)] + r.pass_s[i] - calls);
    // One rank: the dispatcher's calls are all permutation (no communicator).
    permutation.push_back(ep_size == 1 ? dispatch.back()
                                       : std::min(dispatch.back(), r.permutation_s[i]));
  }
  Split s;
  s.routing = Median(routing);
  s.dispatch = Median(dispatch);
  s.permutation = Median(permutation);
  s.communication = s.dispatch - s.permutation;
  s.experts = Median(experts);
  s.other = Median(other);
  s.swiglu = Median(swiglu);
  s.expert_gemm = s.experts - s.swiglu;
  return s;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  using namespace moe;
  std::string which = "all";
  int warmup = 1, repeats = 7, ep_size = 1;
  bool json = false, serve = false;
  std::string serve_path;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--config=", 9) == 0) which = argv[i] + 9;
    if (std::strncmp(argv[i], "--warmup=", 9) == 0) warmup = std::atoi(argv[i] + 9);
    if (std::strncmp(argv[i], "--repeats=", 10) == 0) repeats = std::atoi(argv[i] + 10);
    if (std::strncmp(argv[i], "--ep=", 5) == 0) ep_size = std::atoi(argv[i] + 5);
    if (std::strcmp(argv[i], "--json") == 0) json = true;
    if (std::strcmp(argv[i], "--serve") == 0) json = serve = true;
    if (std::strncmp(argv[i], "--serve=", 8) == 0) {
      json = serve = true;
      serve_path = argv[i] + 8;
    }
  }
  MOE_CHECK(repeats >= 1 && warmup >= 0 && ep_size >= 1)
      << "moe_layer_bench: need --repeats >= 1, --warmup >= 0, --ep >= 1";
  std::unique_ptr<Communicator> ep;
#ifdef MOE_WITH_MPI
  std::unique_ptr<MpiEnvironment> mpi;
  if (ep_size > 1) {
    mpi = std::make_unique<MpiEnvironment>(&argc, &argv);
    ep = MpiCommunicator::World();
  }
#endif
  MOE_CHECK(ep_size == 1 || (ep != nullptr && ep->size() == ep_size))
      << "moe_layer_bench: --ep=" << ep_size << " needs an MPI build run as mpirun -n " << ep_size;
  MOE_CHECK(!serve || ep_size == 1 || !serve_path.empty())
      << "moe_layer_bench: with --ep > 1, --serve needs a path (every rank reads PATH.<rank>)";
  const bool print = ep == nullptr || ep->rank() == 0;
  if (print && !json) {
    std::printf(
        "threads %d x EP %d; one MoE layer forward+backward (fp32, dropless), median of %d "
        "[min..max]\n",
        omp_get_max_threads(), ep_size, repeats);
  }
  bool found = false;
  for (const LayerConfig& c : kConfigs) {
    if (which != c.name && !(which == "all" && std::strcmp(c.name, "tiny") != 0)) continue;
    MOE_CHECK(!serve || !found) << "moe_layer_bench: --serve takes one --config";
    found = true;
    LayerBench bench(c, ep.get());
    for (int i = 0; i < warmup; ++i) bench.Warmup();
    if (serve) {
      // Each rank blocks on its own requests: a rank waiting in a collective
      // for another would poll and take CPU from the PyTorch side.
      FILE* requests = stdin;
      if (!serve_path.empty()) {
        const std::string path = serve_path + "." + std::to_string(ep ? ep->rank() : 0);
        requests = std::fopen(path.c_str(), "r");
        MOE_CHECK(requests != nullptr) << "moe_layer_bench: cannot open --serve=" << path;
      }
      char line[64];
      while (std::fgets(line, sizeof(line), requests) != nullptr) {
        const double layer_s = bench.Repeat();
        if (print) std::printf("{\"layer_s\": %.6g}\n", layer_s);
        std::fflush(stdout);
      }
      if (requests != stdin) std::fclose(requests);
    } else {
      for (int i = 0; i < repeats; ++i) bench.Repeat();
    }
    const Result& r = bench.result();
    if (!print) continue;
    MOE_CHECK(!r.layer_s.empty()) << "moe_layer_bench: --serve got no request";
    const double layer = Median(r.layer_s);
    const double layer_min = *std::min_element(r.layer_s.begin(), r.layer_s.end());
    const double layer_max = *std::max_element(r.layer_s.begin(), r.layer_s.end());
    const Split s = SplitOf(r, ep_size);
    const double peak = Median(r.sgemm_gflops);
    // 3 GEMMs forward, 6 backward, 2 * rows * H * I FLOPs each (rank 0's rows).
    const double expert_flops = 18.0 * static_cast<double>(r.rows) * c.hidden * c.ffn;
    const double expert_gflops = expert_flops / s.experts / 1e9;
    std::vector<double> call(r.calls.size());
    for (size_t k = 0; k < call.size(); ++k) {
      std::vector<double> samples;
      for (const auto& repeat : r.call_s) samples.push_back(repeat[k]);
      call[k] = Median(samples);
    }
    if (json) {
      std::printf(
          "{\"config\": \"%s\", \"hidden\": %lld, \"ffn\": %lld, \"experts\": %lld, "
          "\"top_k\": %lld, \"tokens\": %lld, \"threads\": %d, \"ep\": %d, \"repeats\": %d, "
          "\"layer_s\": %.6g, \"layer_min_s\": %.6g, \"layer_max_s\": %.6g, \"pass_s\": %.6g, "
          "\"routing_s\": %.6g, \"permutation_s\": %.6g, \"communication_s\": %.6g, "
          "\"experts_s\": %.6g, \"swiglu_s\": %.6g, \"expert_gemm_s\": %.6g, \"other_s\": %.6g, "
          "\"dispatch_s\": %.6g, \"local_permutation_s\": %.6g, \"expert_flops\": %.6g, "
          "\"expert_gflops\": %.6g, "
          "\"sgemm_gflops\": %.6g, \"rows\": %lld, \"min_expert_rows\": %lld, "
          "\"max_expert_rows\": %lld, \"y_diff\": %.3g, \"dx_diff\": %.3g, \"calls\": {",
          c.name, static_cast<long long>(c.hidden), static_cast<long long>(c.ffn),
          static_cast<long long>(c.experts), static_cast<long long>(c.top_k),
          static_cast<long long>(c.tokens), omp_get_max_threads(), ep_size,
          static_cast<int>(r.layer_s.size()), layer, layer_min, layer_max, Median(r.pass_s),
          s.routing, s.permutation, s.communication, s.experts, s.swiglu, s.expert_gemm, s.other,
          s.dispatch, Median(r.permutation_s), expert_flops, expert_gflops, peak,
          static_cast<long long>(r.rows), static_cast<long long>(r.min_expert_rows),
          static_cast<long long>(r.max_expert_rows), r.y_diff, r.dx_diff);
      for (size_t k = 0; k < call.size(); ++k) {
        std::printf("%s\"%s\": %.6g", k == 0 ? "" : ", ", r.calls[k].name, call[k]);
      }
      std::printf("}}\n");
    } else {
      auto share = [&](double seconds) { return 100.0 * seconds / s.total(); };
      std::printf(
          "%s (H %lld, I %lld, E %lld, top-%lld, T %lld): layer %.4f s [%.4f..%.4f]; timed "
          "pass %.4f s\n",
          c.name, static_cast<long long>(c.hidden), static_cast<long long>(c.ffn),
          static_cast<long long>(c.experts), static_cast<long long>(c.top_k),
          static_cast<long long>(c.tokens), layer, layer_min, layer_max, Median(r.pass_s));
      std::printf(
          "  routing %.1f%%  permutation %.1f%%  communication %.1f%%  expert GEMMs %.1f%%  "
          "SwiGLU %.1f%%  other %.1f%%\n",
          share(s.routing), share(s.permutation), share(s.communication), share(s.expert_gemm),
          share(s.swiglu), share(s.other));
      std::printf(
          "  experts (GEMMs + SwiGLU) %.1f GFLOP/s = %.2f of the sgemm rate %.0f; rows %lld, per "
          "expert "
          "%lld..%lld (rank 0)\n",
          expert_gflops, expert_gflops / peak, peak, static_cast<long long>(r.rows),
          static_cast<long long>(r.min_expert_rows), static_cast<long long>(r.max_expert_rows));
      for (size_t k = 0; k < call.size(); ++k) {
        std::printf("    %-25s %.5f s\n", r.calls[k].name, call[k]);
      }
    }
    std::fflush(stdout);
  }
  MOE_CHECK(found) << "moe_layer_bench: unknown --config=" << which
                   << " (small, large, all or tiny)";
  return 0;
}
