#include "core/layers/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/cpu/gemm.h"

namespace moe {
namespace {

void CheckCpuFloat(const Tensor& t, const char* name) {
  MOE_CHECK(t.device() == Device::kCpu)
      << "CrossEntropy: the CUDA fused LM-head loss is not built yet (" << name << " is "
      << t.Describe() << ")";
  MOE_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF64)
      << "CrossEntropy: " << name << " must be f32 or f64 on the CPU, got " << t.Describe();
}

// logits[:, :cols] = hidden W[v0 : v0 + cols]^T, row stride `ld`.
template <typename T>
void ChunkLogits(const Tensor& hidden, const Tensor& weight, int64_t v0, int64_t cols, T* logits,
                 int64_t ld) {
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1);
  cpu::Gemm<T>(false, true, tokens, cols, h, T(1), hidden.data<T>(), h, weight.data<T>() + v0 * h,
               h, T(0), logits, ld);
}

template <typename T>
CrossEntropy::Result ForwardCpu(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                                int64_t chunk, Tensor* lse) {
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  const int32_t* label = labels.data<int32_t>();
  std::vector<T> logits(static_cast<size_t>(tokens * chunk));
  // Running max and sum of exp(logit - max) per token, in double so that a
  // long vocab does not lose digits in fp32.
  std::vector<double> m(static_cast<size_t>(tokens), -std::numeric_limits<double>::infinity());
  std::vector<double> s(static_cast<size_t>(tokens), 0.0);
  std::vector<double> label_logit(static_cast<size_t>(tokens), 0.0);
  for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - v0);
    ChunkLogits<T>(hidden, weight, v0, cols, logits.data(), chunk);
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tokens; ++r) {
      const T* row = logits.data() + r * chunk;
      double chunk_max = m[r];
      for (int64_t c = 0; c < cols; ++c) chunk_max = std::max(chunk_max, double(row[c]));
      double chunk_sum = 0;
#pragma omp simd reduction(+ : chunk_sum)
      for (int64_t c = 0; c < cols; ++c) chunk_sum += std::exp(double(row[c]) - chunk_max);
      // exp(-inf) = 0 on the first chunk, where there is nothing to rescale.
      s[r] = s[r] * std::exp(m[r] - chunk_max) + chunk_sum;
      m[r] = chunk_max;
      if (label[r] >= v0 && label[r] < v0 + cols) label_logit[r] = row[label[r] - v0];
    }
  }
  CrossEntropy::Result result{0.0, 0};
  T* lse_data = lse->data<T>();
  // Summed in token order: the same bits for any thread count.
  for (int64_t r = 0; r < tokens; ++r) {
    const double row_lse = m[r] + std::log(s[r]);
    lse_data[r] = static_cast<T>(row_lse);
    if (label[r] < 0) continue;
    result.loss_sum += row_lse - label_logit[r];
    ++result.tokens;
  }
  return result;
}

template <typename T>
void BackwardCpu(double scale, const Tensor& weight, const CrossEntropy::Saved& saved,
                 int64_t chunk, Tensor* dhidden, Tensor* dweight) {
  const Tensor& hidden = saved.hidden;
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1), vocab = weight.dim(0);
  const int32_t* label = saved.labels.data<int32_t>();
  const T* lse = saved.lse.data<T>();
  std::vector<T> p(static_cast<size_t>(tokens * chunk));
  dhidden->SetZero();
  for (int64_t v0 = 0; v0 < vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, vocab - v0);
    ChunkLogits<T>(hidden, weight, v0, cols, p.data(), chunk);
    // dlogits = scale * (softmax - onehot), zero for ignored tokens.
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tokens; ++r) {
      T* row = p.data() + r * chunk;
      const T row_scale = label[r] < 0 ? T(0) : static_cast<T>(scale);
      const T l = lse[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] = row_scale * std::exp(row[c] - l);
      if (label[r] >= v0 && label[r] < v0 + cols) row[label[r] - v0] -= row_scale;
    }
    // dhidden += dlogits W_c;  dW_c += dlogits^T hidden.
    cpu::Gemm<T>(false, false, tokens, h, cols, T(1), p.data(), chunk, weight.data<T>() + v0 * h, h,
                 T(1), dhidden->data<T>(), h);
    cpu::Gemm<T>(true, false, cols, h, tokens, T(1), p.data(), chunk, hidden.data<T>(), h, T(1),
                 dweight->data<T>() + v0 * h, h);
  }
}

}  // namespace

CrossEntropy::CrossEntropy(int64_t vocab_chunk) : vocab_chunk_(vocab_chunk) {
  MOE_CHECK(vocab_chunk > 0) << "CrossEntropy: vocab_chunk must be positive, got " << vocab_chunk;
}

CrossEntropy::Result CrossEntropy::Forward(const Tensor& hidden, const Tensor& weight,
                                           const Tensor& labels, Saved* saved) const {
  CheckCpuFloat(hidden, "hidden");
  CheckCpuFloat(weight, "weight");
  MOE_CHECK(hidden.ndim() == 2) << "CrossEntropy: hidden must be [tokens, hidden], got "
                                << hidden.Describe();
  MOE_CHECK(weight.ndim() == 2 && weight.dim(1) == hidden.dim(1) &&
            weight.dtype() == hidden.dtype())
      << "CrossEntropy: weight must be [vocab, " << hidden.dim(1) << "] like hidden "
      << hidden.Describe() << ", got " << weight.Describe();
  MOE_CHECK(weight.dim(0) > 0) << "CrossEntropy: weight has an empty vocab: " << weight.Describe();
  const int64_t tokens = hidden.dim(0), vocab = weight.dim(0);
  MOE_CHECK(labels.dtype() == DType::kI32 && labels.device() == Device::kCpu &&
            labels.shape() == Shape{tokens})
      << "CrossEntropy: labels must be i32[" << tokens << "] on cpu, got " << labels.Describe();
  const int32_t* label = labels.data<int32_t>();
  for (int64_t r = 0; r < tokens; ++r) {
    MOE_CHECK(label[r] < vocab) << "CrossEntropy: label " << label[r] << " at position " << r
                                << " is out of range for vocab " << vocab;
  }

  const int64_t chunk = std::min(vocab_chunk_, vocab);
  Tensor lse = Tensor::Empty({tokens}, hidden.dtype());
  const Result result = hidden.dtype() == DType::kF64
                            ? ForwardCpu<double>(hidden, weight, labels, chunk, &lse)
                            : ForwardCpu<float>(hidden, weight, labels, chunk, &lse);
  *saved = Saved{hidden, labels, lse};
  return result;
}

Tensor CrossEntropy::Backward(double scale, const Tensor& weight, const Saved& saved,
                              Tensor* dweight) const {
  MOE_CHECK(saved.hidden.defined())
      << "CrossEntropy: Backward needs the Saved filled by Forward, got an empty one";
  CheckCpuFloat(weight, "weight");
  MOE_CHECK(weight.ndim() == 2 && weight.dim(1) == saved.hidden.dim(1) &&
            weight.dtype() == saved.hidden.dtype())
      << "CrossEntropy: weight " << weight.Describe() << " does not match hidden "
      << saved.hidden.Describe();
  MOE_CHECK(dweight != nullptr && dweight->shape() == weight.shape() &&
            dweight->dtype() == weight.dtype() && dweight->device() == weight.device())
      << "CrossEntropy: dweight must be like weight " << weight.Describe() << ", got "
      << (dweight != nullptr ? dweight->Describe() : std::string("null"));
  const int64_t chunk = std::min(vocab_chunk_, weight.dim(0));
  Tensor dhidden = Tensor::Empty(saved.hidden.shape(), saved.hidden.dtype());
  if (weight.dtype() == DType::kF64) {
    BackwardCpu<double>(scale, weight, saved, chunk, &dhidden, dweight);
  } else {
    BackwardCpu<float>(scale, weight, saved, chunk, &dhidden, dweight);
  }
  return dhidden;
}

}  // namespace moe
