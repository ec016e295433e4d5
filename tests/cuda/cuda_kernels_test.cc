// The CUDA kernels behind the layers (RMSNorm, RoPE, SwiGLU, cross-entropy),
// forward and backward, against the CPU kernels in double on the same inputs.
// Shapes are chosen to leave partial blocks and vector tails: a row wider
// than a block, rows narrower than a warp, more rows than the RMSNorm
// backward has blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/ops/cpu/cross_entropy.h"
#include "core/ops/cpu/rmsnorm.h"
#include "core/ops/cpu/rope.h"
#include "core/ops/cpu/swiglu.h"
#include "core/ops/cuda/kernels.h"
#include "tests/cuda/cuda_test_util.h"

namespace moe {
namespace {

using testing::Cpu;
using testing::CudaDTypeTest;
using testing::F64;
using testing::Gpu;
using testing::kF32Tolerance;
using testing::MaxRelativeError;
using testing::RandomIds;
using testing::RandomInput;
using testing::Tolerance;

constexpr Device kCuda = Device::kCuda;

// ---------------------------------------------------------------- RMSNorm

class CudaRmsNormTest : public CudaDTypeTest {};

TEST_P(CudaRmsNormTest, ForwardAndBackwardMatchCpu) {
  const DType dtype = this->dtype();
  const double eps = 1e-5;
  struct Case {
    int64_t rows, dim;
  };
  // dim 1000: a row longer than a block; 600 rows: several rows per backward
  // block; dim 20: most threads of a block idle.
  for (const Case& c : {Case{37, 1000}, Case{600, 136}, Case{5, 20}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << c.rows << " dim=" << c.dim);
    const Tensor x = RandomInput({c.rows, c.dim}, dtype, 1);
    const Tensor w = RandomInput({c.dim}, dtype, 2);
    const Tensor dy = RandomInput({c.rows, c.dim}, dtype, 3);
    // dweight accumulates (+=): start it from non-zero values.
    const Tensor dw0 = RandomInput({c.dim}, DType::kF32, 4);

    const Tensor x64 = F64(x), w64 = F64(w), dy64 = F64(dy);
    Tensor y_ref = Tensor::Empty({c.rows, c.dim}, DType::kF64);
    Tensor inv_ref = Tensor::Empty({c.rows}, DType::kF64);
    Tensor dx_ref = Tensor::Empty({c.rows, c.dim}, DType::kF64);
    Tensor dw_ref = F64(dw0);
    cpu::RmsNormForward<double>(y_ref.data<double>(), inv_ref.data<double>(), x64.data<double>(),
                                w64.data<double>(), c.rows, c.dim, eps);
    cpu::RmsNormBackward<double>(dx_ref.data<double>(), dw_ref.data<double>(), dy64.data<double>(),
                                 x64.data<double>(), w64.data<double>(), inv_ref.data<double>(),
                                 c.rows, c.dim);

    const Tensor xg = Gpu(x), wg = Gpu(w);
    Tensor y = Tensor::Empty({c.rows, c.dim}, dtype, kCuda);
    Tensor inv = Tensor::Empty({c.rows}, DType::kF32, kCuda);
    cuda::RmsNormForward(xg, wg, eps, &y, &inv);
    Tensor dx = Tensor::Empty({c.rows, c.dim}, dtype, kCuda);
    Tensor dw = Gpu(dw0);
    cuda::RmsNormBackward(Gpu(dy), xg, wg, inv, &dx, &dw);

    EXPECT_LT(MaxRelativeError(Cpu(y), y_ref), Tolerance(dtype));
    // fp32 statistics and fp32 parameter gradients, whatever the activations.
    EXPECT_LT(MaxRelativeError(Cpu(inv), inv_ref), kF32Tolerance);
    EXPECT_LT(MaxRelativeError(Cpu(dx), dx_ref), Tolerance(dtype));
    EXPECT_LT(MaxRelativeError(Cpu(dw), dw_ref), kF32Tolerance);
  }
}

// dweight is summed in a fixed order (no float atomics): bit-identical runs.
TEST_P(CudaRmsNormTest, WeightGradientIsDeterministic) {
  const DType dtype = this->dtype();
  const int64_t rows = 1000, dim = 300;
  const Tensor x = Gpu(RandomInput({rows, dim}, dtype, 5));
  const Tensor w = Gpu(RandomInput({dim}, dtype, 6));
  const Tensor dy = Gpu(RandomInput({rows, dim}, dtype, 7));
  Tensor y = Tensor::Empty({rows, dim}, dtype, kCuda);
  Tensor inv = Tensor::Empty({rows}, DType::kF32, kCuda);
  cuda::RmsNormForward(x, w, 1e-6, &y, &inv);
  std::vector<std::vector<float>> runs;
  for (int run = 0; run < 3; ++run) {
    Tensor dx = Tensor::Empty({rows, dim}, dtype, kCuda);
    Tensor dw = Tensor::Zeros({dim}, DType::kF32, kCuda);
    cuda::RmsNormBackward(dy, x, w, inv, &dx, &dw);
    runs.push_back(dw.ToFloatVector());
  }
  for (int run = 1; run < 3; ++run) {
    EXPECT_EQ(std::memcmp(runs[0].data(), runs[run].data(), dim * sizeof(float)), 0) << run;
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaRmsNormTest, testing::AllActivationDTypes(),
                         testing::DTypeParamName);

// ------------------------------------------------------------------- RoPE

class CudaRopeTest : public CudaDTypeTest {};

TEST_P(CudaRopeTest, ForwardBackwardAndInPlaceMatchCpu) {
  const DType dtype = this->dtype();
  struct Case {
    int64_t batch, seq, heads, head_dim, pos_offset, positions;
  };
  for (const Case& c :
       {Case{2, 7, 3, 64, 5, 16}, Case{1, 5, 1, 6, 0, 5}, Case{3, 4, 2, 128, 9, 40}}) {
    SCOPED_TRACE(::testing::Message()
                 << "head_dim=" << c.head_dim << " pos_offset=" << c.pos_offset);
    const int64_t half = c.head_dim / 2;
    const Shape shape{c.batch, c.seq, c.heads, c.head_dim};
    // The kernels take kF32 tables; the reference reads the same values.
    Tensor cos = Tensor::Empty({c.positions, half}, DType::kF32);
    Tensor sin = Tensor::Empty({c.positions, half}, DType::kF32);
    cpu::RopeTables<float>(cos.data<float>(), sin.data<float>(), c.positions, c.head_dim, 1e4);
    const Tensor x = RandomInput(shape, dtype, 21);
    const Tensor dy = RandomInput(shape, dtype, 22);

    const Tensor cos64 = F64(cos), sin64 = F64(sin), x64 = F64(x), dy64 = F64(dy);
    Tensor y_ref = Tensor::Empty(shape, DType::kF64);
    Tensor dx_ref = Tensor::Empty(shape, DType::kF64);
    cpu::RopeForward<double>(y_ref.data<double>(), x64.data<double>(), cos64.data<double>(),
                             sin64.data<double>(), c.batch, c.seq, c.heads, c.head_dim,
                             c.pos_offset);
    cpu::RopeBackward<double>(dx_ref.data<double>(), dy64.data<double>(), cos64.data<double>(),
                              sin64.data<double>(), c.batch, c.seq, c.heads, c.head_dim,
                              c.pos_offset);

    const Tensor cos_g = Gpu(cos), sin_g = Gpu(sin);
    Tensor y = Tensor::Empty(shape, dtype, kCuda);
    cuda::RopeForward(Gpu(x), cos_g, sin_g, c.pos_offset, &y);
    EXPECT_LT(MaxRelativeError(Cpu(y), y_ref), Tolerance(dtype));

    Tensor dx = Tensor::Empty(shape, dtype, kCuda);
    cuda::RopeBackward(Gpu(dy), cos_g, sin_g, c.pos_offset, &dx);
    EXPECT_LT(MaxRelativeError(Cpu(dx), dx_ref), Tolerance(dtype));

    // In place (y aliases x), as the attention layer rotates q and k.
    Tensor inplace = Gpu(x);
    cuda::RopeForward(inplace, cos_g, sin_g, c.pos_offset, &inplace);
    EXPECT_EQ(std::memcmp(Cpu(inplace).raw_data(), Cpu(y).raw_data(), y.nbytes()), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaRopeTest, testing::AllActivationDTypes(),
                         testing::DTypeParamName);

// ----------------------------------------------------------------- SwiGLU

class CudaSwigluTest : public CudaDTypeTest {};

// `offset` elements into a larger buffer: offset 1 misaligns the pointers
// and forces the element-at-a-time path; offset 0 takes the vector path.
void CheckSwiglu(DType dtype, int64_t n, int64_t offset) {
  SCOPED_TRACE(::testing::Message() << "n=" << n << " offset=" << offset);
  const Tensor gate = RandomInput({n}, dtype, 31, 3.0);  // wide range: saturated sigmoids too
  const Tensor up = RandomInput({n}, dtype, 32);
  const Tensor dout = RandomInput({n}, dtype, 33);

  const Tensor gate64 = F64(gate), up64 = F64(up), dout64 = F64(dout);
  Tensor out_ref = Tensor::Empty({n}, DType::kF64);
  Tensor dgate_ref = Tensor::Empty({n}, DType::kF64);
  Tensor dup_ref = Tensor::Empty({n}, DType::kF64);
  cpu::SwigluForward<double>(out_ref.data<double>(), gate64.data<double>(), up64.data<double>(), n);
  cpu::SwigluBackward<double>(dgate_ref.data<double>(), dup_ref.data<double>(),
                              dout64.data<double>(), gate64.data<double>(), up64.data<double>(), n);

  // Each GPU tensor is a view `offset` elements into its own buffer.
  auto gpu_view = [&](const Tensor* src) {
    Tensor view = Tensor::Empty({n + offset}, dtype, kCuda).View(offset, {n});
    if (src != nullptr) view.CopyFrom(*src);
    return view;
  };
  const Tensor gate_g = gpu_view(&gate), up_g = gpu_view(&up), dout_g = gpu_view(&dout);
  Tensor out = gpu_view(nullptr), dgate = gpu_view(nullptr), dup = gpu_view(nullptr);
  cuda::SwigluForward(gate_g, up_g, &out);
  cuda::SwigluBackward(dout_g, gate_g, up_g, &dgate, &dup);
  EXPECT_LT(MaxRelativeError(Cpu(out), out_ref), Tolerance(dtype));
  EXPECT_LT(MaxRelativeError(Cpu(dgate), dgate_ref), Tolerance(dtype));
  EXPECT_LT(MaxRelativeError(Cpu(dup), dup_ref), Tolerance(dtype));
}

TEST_P(CudaSwigluTest, ForwardAndBackwardMatchCpu) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4096}, int64_t{100003}}) {
    CheckSwiglu(dtype(), n, 0);
    CheckSwiglu(dtype(), n, 1);
  }
}

TEST_P(CudaSwigluTest, AcceptsAnyShape) {
  const DType dtype = this->dtype();
  const Tensor gate = RandomInput({3, 5, 8}, dtype, 34);
  const Tensor up = RandomInput({3, 5, 8}, dtype, 35);
  Tensor out = Tensor::Empty({3, 5, 8}, dtype, kCuda);
  cuda::SwigluForward(Gpu(gate), Gpu(up), &out);
  Tensor out_ref = Tensor::Empty({120}, DType::kF64);
  cpu::SwigluForward<double>(out_ref.data<double>(), F64(gate).data<double>(),
                             F64(up).data<double>(), 120);
  EXPECT_LT(MaxRelativeError(Cpu(out), out_ref), Tolerance(dtype));
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaSwigluTest, testing::AllActivationDTypes(),
                         testing::DTypeParamName);

// ---------------------------------------------------------- Cross-entropy

class CudaCrossEntropyTest : public CudaDTypeTest {};

TEST_P(CudaCrossEntropyTest, ForwardAndBackwardMatchCpu) {
  const DType dtype = this->dtype();
  const double inf = std::numeric_limits<double>::infinity();
  const float scale = 0.37f;
  struct Case {
    int64_t rows, vocab;
  };
  // vocab 10: most threads of a block see no element; 50000: many per thread.
  for (const Case& c : {Case{6, 10}, Case{9, 257}, Case{5, 50000}}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << c.rows << " vocab=" << c.vocab);
    Tensor logits = RandomInput({c.rows, c.vocab}, dtype, 41, 2.0);
    Tensor labels = RandomIds({c.rows}, c.vocab, 42);
    // Ignored rows, with both conventions for "ignore".
    labels.data<int32_t>()[1] = -100;
    labels.data<int32_t>()[c.rows - 1] = -1;
    // A masked (-inf) logit contributes nothing and must not turn into NaN.
    logits.SetFromDouble(2, -inf);
    labels.data<int32_t>()[0] = 3;

    const Tensor logits64 = F64(logits);
    Tensor losses_ref = Tensor::Empty({c.rows}, DType::kF64);
    Tensor lse_ref = Tensor::Empty({c.rows}, DType::kF64);
    Tensor dlogits_ref = Tensor::Empty({c.rows, c.vocab}, DType::kF64);
    cpu::CrossEntropyForward<double>(losses_ref.data<double>(), lse_ref.data<double>(),
                                     logits64.data<double>(), labels.data<int32_t>(), c.rows,
                                     c.vocab);
    cpu::CrossEntropyBackward<double>(dlogits_ref.data<double>(), logits64.data<double>(),
                                      lse_ref.data<double>(), labels.data<int32_t>(), scale, c.rows,
                                      c.vocab);

    const Tensor logits_g = Gpu(logits), labels_g = Gpu(labels);
    Tensor losses = Tensor::Empty({c.rows}, DType::kF32, kCuda);
    Tensor lse = Tensor::Empty({c.rows}, DType::kF32, kCuda);
    cuda::CrossEntropyForward(logits_g, labels_g, &losses, &lse);
    // Garbage in dlogits first: ignored rows must be written, not skipped.
    Tensor dlogits = Gpu(RandomInput({c.rows, c.vocab}, dtype, 43));
    cuda::CrossEntropyBackward(logits_g, labels_g, lse, scale, &dlogits);

    const Tensor losses_c = Cpu(losses), dlogits_c = Cpu(dlogits);
    EXPECT_LT(MaxRelativeError(losses_c, losses_ref), kF32Tolerance);
    EXPECT_LT(MaxRelativeError(Cpu(lse), lse_ref), kF32Tolerance);
    EXPECT_LT(MaxRelativeError(dlogits_c, dlogits_ref), Tolerance(dtype));
    for (int64_t row : {int64_t{1}, c.rows - 1}) {
      EXPECT_EQ(losses_c.GetAsDouble(row), 0.0) << "ignored row " << row;
      for (int64_t v = 0; v < c.vocab; ++v) {
        ASSERT_EQ(dlogits_c.GetAsDouble(row * c.vocab + v), 0.0) << "ignored row " << row;
      }
    }
    EXPECT_EQ(dlogits_c.GetAsDouble(2), 0.0) << "gradient of a -inf logit";
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, CudaCrossEntropyTest, testing::AllActivationDTypes(),
                         testing::DTypeParamName);

// ------------------------------------------------------------ Bad arguments

// These run without a GPU: the device check comes first.
TEST(CudaKernelsDeathTest, CpuTensorsAreRejectedByName) {
  const Tensor x = Tensor::Zeros({2, 8}, DType::kF32);
  const Tensor w = Tensor::Zeros({8}, DType::kF32);
  Tensor y = Tensor::Zeros({2, 8}, DType::kF32);
  Tensor inv = Tensor::Zeros({2}, DType::kF32);
  EXPECT_DEATH(cuda::RmsNormForward(x, w, 1e-5, &y, &inv),
               "cuda::RmsNormForward: x must be an f32 or bf16 CUDA tensor \\[rows, dim\\], got "
               "f32\\[2, 8\\] on cpu");
  EXPECT_DEATH(cuda::SwigluForward(x, x, &y),
               "cuda::SwigluForward: gate must be an f32 or bf16 "
               "CUDA tensor, got f32\\[2, 8\\] on cpu");
  const Tensor labels = Tensor::Zeros({2}, DType::kI32);
  EXPECT_DEATH(cuda::CrossEntropyForward(x, labels, &inv, &inv),
               "cuda::CrossEntropyForward: logits must be an f32 or bf16 CUDA tensor");
  EXPECT_DEATH(cuda::RopeForward(x, w, w, 0, &y),
               "cuda::RopeForward: x must be an f32 or bf16 CUDA tensor \\[batch, seq, heads, "
               "head_dim\\]");
}

TEST(CudaKernelsDeathTest, WrongShapesNameTheTensorAndExpectedShape) {
  MOE_SKIP_WITHOUT_GPU();
  const Tensor x = Tensor::Zeros({2, 8}, DType::kF32, kCuda);
  const Tensor w7 = Tensor::Zeros({7}, DType::kF32, kCuda);
  const Tensor w8_bf16 = Tensor::Zeros({8}, DType::kBF16, kCuda);
  Tensor y = Tensor::Zeros({2, 8}, DType::kF32, kCuda);
  Tensor inv = Tensor::Zeros({2}, DType::kF32, kCuda);
  EXPECT_DEATH(cuda::RmsNormForward(x, w7, 1e-5, &y, &inv),
               "cuda::RmsNormForward: weight must be f32\\[8\\] on cuda, got f32\\[7\\] on cuda");
  EXPECT_DEATH(cuda::RmsNormForward(x, w8_bf16, 1e-5, &y, &inv),
               "cuda::RmsNormForward: weight must be f32\\[8\\] on cuda, got bf16\\[8\\] on cuda");

  const Tensor q = Tensor::Zeros({1, 4, 2, 8}, DType::kF32, kCuda);
  const Tensor table = Tensor::Zeros({6, 4}, DType::kF32, kCuda);
  Tensor q_out = Tensor::Zeros({1, 4, 2, 8}, DType::kF32, kCuda);
  EXPECT_DEATH(cuda::RopeForward(q, table, table, 3, &q_out),
               "cuda::RopeForward: positions \\[3, 7\\) are outside the cos/sin tables of 6");
  const Tensor narrow_table = Tensor::Zeros({6, 3}, DType::kF32, kCuda);
  EXPECT_DEATH(cuda::RopeForward(q, narrow_table, narrow_table, 0, &q_out),
               "cuda::RopeForward: cos must be f32\\[6, 4\\] on cuda");

  const Tensor labels64 = Tensor::Zeros({2}, DType::kI64, kCuda);
  EXPECT_DEATH(cuda::CrossEntropyForward(x, labels64, &inv, &inv),
               "cuda::CrossEntropyForward: labels must be i32\\[2\\] on cuda, got i64\\[2\\]");
  Tensor up_wrong = Tensor::Zeros({2, 9}, DType::kF32, kCuda);
  EXPECT_DEATH(cuda::SwigluForward(x, up_wrong, &y),
               "cuda::SwigluForward: up must be f32\\[2, 8\\] on cuda, got f32\\[2, 9\\]");
}

// A label past the vocab would read outside the row: the kernel traps and
// the next CUDA call fails instead.
TEST(CudaKernelsDeathTest, LabelBeyondVocabFailsLoudly) {
  MOE_SKIP_WITHOUT_GPU();
  const Tensor logits = Tensor::Zeros({2, 50}, DType::kF32, kCuda);
  Tensor labels = Tensor::Zeros({2}, DType::kI32);
  labels.data<int32_t>()[1] = 50;
  Tensor losses = Tensor::Empty({2}, DType::kF32, kCuda);
  Tensor lse = Tensor::Empty({2}, DType::kF32, kCuda);
  EXPECT_DEATH(
      {
        cuda::CrossEntropyForward(logits, Gpu(labels), &losses, &lse);
        cuda::Synchronize();
      },
      "check failed: cuda");
}

}  // namespace
}  // namespace moe
