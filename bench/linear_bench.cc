// Linear forward + backward (three GEMMs: y = x W^T, dx = dy W, dW += dy^T x)
// through our layer, against the same three cblas_sgemm calls made directly:
// the ratio shows what the layer adds on top of OpenBLAS. The PyTorch peer is
// measured by linear_vs_pytorch.py, which runs this binary in the same run.
//
//   linear_bench [--repeats=N] [--json]
// Prints one line per shape; with --json one JSON object per line.
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/layers/linear.h"
#include "core/philox.h"

namespace moe {
namespace {

struct LinearShape {
  int64_t tokens, in, out;
};

// Transformer-shaped GEMMs: attention projections and expert MLPs of small
// models, sized for a 2-core machine.
const std::vector<LinearShape> kShapes = {
    {1024, 256, 256}, {1024, 256, 1024}, {2048, 512, 512}, {2048, 512, 1408}, {4096, 1024, 1024},
};

Tensor Random(const Shape& shape, uint64_t stream) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  InitNormal(&t, ShardSlice::Whole(shape), 1, stream, 0.0, 0.02);
  return t;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  using namespace moe;
  int repeats = 11;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--repeats=", 10) == 0) repeats = std::atoi(argv[i] + 10);
    if (std::strcmp(argv[i], "--json") == 0) json = true;
  }
  if (!json) {
    std::printf("threads %d; GFLOP/s of forward+backward (3 GEMMs), median of %d [min..max]\n",
                omp_get_max_threads(), repeats);
    std::printf("%-18s %22s %22s %7s\n", "tokens x in x out", "our Linear", "raw OpenBLAS",
                "ratio");
  }
  // Bring the cores to their steady clock and the thread pool up before the
  // first measurement, which otherwise reads low.
  {
    const Tensor a = Random({1024, 1024}, 4);
    Tensor c = Tensor::Empty({1024, 1024}, DType::kF32);
    for (int i = 0; i < 40; ++i) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1024, 1024, 1024, 1.0f,
                  a.data<float>(), 1024, a.data<float>(), 1024, 0.0f, c.data<float>(), 1024);
    }
  }
  for (const LinearShape& s : kShapes) {
    Linear linear("bench", s.in, s.out);
    linear.weight().value.CopyFrom(Random({s.out, s.in}, 1));
    const Tensor x = Random({s.tokens, s.in}, 2);
    const Tensor dy = Random({s.tokens, s.out}, 3);
    const double flops = 3.0 * 2.0 * s.tokens * s.in * s.out;

    auto ours_body = [&] {
      Linear::Saved saved;
      linear.Forward(x, &saved);
      linear.Backward(dy, saved);
    };
    Tensor y = Tensor::Empty({s.tokens, s.out}, DType::kF32);
    Tensor dx = Tensor::Empty({s.tokens, s.in}, DType::kF32);
    Tensor dw = Tensor::Zeros({s.out, s.in}, DType::kF32);
    const float* w = linear.weight().value.data<float>();
    const int m = static_cast<int>(s.tokens), k = static_cast<int>(s.in),
              n = static_cast<int>(s.out);
    auto blas_body = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x.data<float>(), k, w, k,
                  0.0f, y.data<float>(), n);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, n, 1.0f, dy.data<float>(), n, w,
                  k, 0.0f, dx.data<float>(), k);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, k, m, 1.0f, dy.data<float>(), n,
                  x.data<float>(), k, 1.0f, dw.data<float>(), k);
    };
    const auto [ours, blas] = bench::MeasurePair(ours_body, blas_body, 3, repeats);

    const double ours_gflops = flops / ours.median_s / 1e9;
    const double blas_gflops = flops / blas.median_s / 1e9;
    if (json) {
      std::printf(
          "{\"tokens\": %lld, \"in\": %lld, \"out\": %lld, \"threads\": %d, \"ours_s\": %.6g, "
          "\"ours_min_s\": %.6g, \"ours_max_s\": %.6g, \"blas_s\": %.6g, \"blas_min_s\": %.6g, "
          "\"blas_max_s\": %.6g}\n",
          static_cast<long long>(s.tokens), static_cast<long long>(s.in),
          static_cast<long long>(s.out), omp_get_max_threads(), ours.median_s, ours.min_s,
          ours.max_s, blas.median_s, blas.min_s, blas.max_s);
    } else {
      const std::string name =
          std::to_string(s.tokens) + "x" + std::to_string(s.in) + "x" + std::to_string(s.out);
      std::printf("%-18s %7.1f [%5.1f..%5.1f] %7.1f [%5.1f..%5.1f] %7.3f\n", name.c_str(),
                  ours_gflops, flops / ours.max_s / 1e9, flops / ours.min_s / 1e9, blas_gflops,
                  flops / blas.max_s / 1e9, flops / blas.min_s / 1e9, ours_gflops / blas_gflops);
    }
  }
  return 0;
}
