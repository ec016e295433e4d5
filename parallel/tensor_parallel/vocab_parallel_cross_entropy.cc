#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/cpu/gemm.h"
#include "parallel/tensor_parallel/sequence_parallel.h"

namespace moe {
namespace {

constexpr char kWho[] = "VocabParallelCrossEntropy";

void CheckCpuFloat(const Tensor& t, const char* name) {
  MOE_CHECK(t.defined() && t.device() == Device::kCpu &&
            (t.dtype() == DType::kF32 || t.dtype() == DType::kF64))
      << kWho << ": " << name << " must be f32 or f64 on the CPU, got "
      << (t.defined() ? t.Describe() : std::string("an undefined tensor"));
}

// logits[:, :cols] = hidden W[v0 : v0 + cols]^T (local rows), row stride `ld`.
template <typename T>
void ChunkLogits(const Tensor& hidden, const Tensor& weight, int64_t v0, int64_t cols, T* logits,
                 int64_t ld) {
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1);
  cpu::Gemm<T>(false, true, tokens, cols, h, T(1), hidden.data<T>(), h, weight.data<T>() + v0 * h,
               h, T(0), logits, ld);
}

// This rank's part: per token the max of its logits, the sum of
// exp(logit - max) and the label's logit when the label is one of its rows.
template <typename T>
void LocalStatistics(const Tensor& hidden, const Tensor& weight, const int32_t* label,
                     int64_t vocab_begin, int64_t chunk, double* m, double* s,
                     double* label_logit) {
  const int64_t tokens = hidden.dim(0), local_vocab = weight.dim(0);
  std::vector<T> logits(static_cast<size_t>(tokens * chunk));
  for (int64_t v0 = 0; v0 < local_vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, local_vocab - v0);
    ChunkLogits<T>(hidden, weight, v0, cols, logits.data(), chunk);
    const int64_t g0 = vocab_begin + v0;
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
      if (label[r] >= g0 && label[r] < g0 + cols) label_logit[r] = row[label[r] - g0];
    }
  }
}

template <typename T>
void BackwardCpu(double scale, const Tensor& weight, const VocabParallelCrossEntropy::Saved& saved,
                 int64_t vocab_begin, int64_t chunk, Tensor* dhidden, Tensor* dweight) {
  const Tensor hidden = saved.hidden.Reshape({saved.lse.numel(), weight.dim(1)});
  const int64_t tokens = hidden.dim(0), h = hidden.dim(1), local_vocab = weight.dim(0);
  const int32_t* label = saved.labels.data<int32_t>();
  const T* lse = saved.lse.data<T>();
  std::vector<T> p(static_cast<size_t>(tokens * chunk));
  dhidden->SetZero();
  for (int64_t v0 = 0; v0 < local_vocab; v0 += chunk) {
    const int64_t cols = std::min(chunk, local_vocab - v0);
    const int64_t g0 = vocab_begin + v0;
    ChunkLogits<T>(hidden, weight, v0, cols, p.data(), chunk);
    // dlogits = scale * (softmax - onehot), zero for ignored tokens.
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < tokens; ++r) {
      T* row = p.data() + r * chunk;
      const T row_scale = label[r] < 0 ? T(0) : static_cast<T>(scale);
      const T l = lse[r];
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) row[c] = row_scale * std::exp(row[c] - l);
      if (label[r] >= g0 && label[r] < g0 + cols) row[label[r] - g0] -= row_scale;
    }
    // dhidden += dlogits W_c;  dW_c += dlogits^T hidden.
    cpu::Gemm<T>(false, false, tokens, h, cols, T(1), p.data(), chunk, weight.data<T>() + v0 * h, h,
                 T(1), dhidden->data<T>(), h);
    cpu::Gemm<T>(true, false, cols, h, tokens, T(1), p.data(), chunk, hidden.data<T>(), h, T(1),
                 dweight->data<T>() + v0 * h, h);
  }
}

}  // namespace

VocabParallelCrossEntropy::VocabParallelCrossEntropy(Communicator* tp, bool sequence_parallel,
                                                     int64_t vocab_chunk)
    : tp_(tp), sequence_parallel_(sequence_parallel), vocab_chunk_(vocab_chunk) {
  MOE_CHECK(tp != nullptr) << kWho << ": needs the tensor-parallel communicator, got null";
  MOE_CHECK(vocab_chunk > 0) << kWho << ": vocab_chunk must be positive, got " << vocab_chunk;
}

VocabParallelCrossEntropy::Result VocabParallelCrossEntropy::Forward(const Tensor& hidden,
                                                                     const Tensor& weight,
                                                                     const Tensor& labels,
                                                                     Saved* saved) const {
  CheckCpuFloat(hidden, "hidden");
  CheckCpuFloat(weight, "weight");
  if (sequence_parallel_) {
    MOE_CHECK(hidden.ndim() == 3) << kWho << ": under sequence parallelism hidden must be "
                                  << "[batch, seq/TP, hidden], got " << hidden.Describe();
  }
  MOE_CHECK(hidden.ndim() >= 2) << kWho << ": hidden must be [..., hidden], got "
                                << hidden.Describe();
  const int64_t h = hidden.dim(-1);
  MOE_CHECK(weight.ndim() == 2 && weight.dim(0) > 0 && weight.dim(1) == h &&
            weight.dtype() == hidden.dtype())
      << kWho << ": weight must be this rank's LM head rows [vocab/TP, " << h << "] like hidden "
      << hidden.Describe() << ", got " << weight.Describe();
  Shape whole = hidden.shape();
  if (sequence_parallel_) whole[1] *= tp_->size();
  const Shape label_shape(whole.begin(), whole.end() - 1);
  MOE_CHECK(labels.dtype() == DType::kI32 && labels.device() == Device::kCpu &&
            labels.shape() == label_shape)
      << kWho << ": labels must be i32" << ShapeToString(label_shape) << " on cpu, got "
      << labels.Describe();
  const int64_t local_vocab = weight.dim(0), vocab = local_vocab * tp_->size();
  const int64_t tokens = labels.numel();
  const int32_t* label = labels.data<int32_t>();
  for (int64_t r = 0; r < tokens; ++r) {
    MOE_CHECK(label[r] < vocab) << kWho << ": label " << label[r] << " at position " << r
                                << " is out of range for vocab " << vocab << " (" << tp_->size()
                                << " TP ranks x " << local_vocab << " rows)";
  }

  const Tensor hidden_full = sequence_parallel_ ? GatherSequence(kWho, hidden, tp_) : hidden;
  const Tensor hidden2 = hidden_full.Reshape({tokens, h});
  const int64_t vocab_begin = tp_->rank() * local_vocab;
  const int64_t chunk = std::min(vocab_chunk_, local_vocab);
  // Statistics in double, so a long vocab loses no digits in fp32: m, then
  // (s rescaled to the global max, label logit) per token.
  Tensor max_t = Tensor::Empty({tokens}, DType::kF64);
  Tensor sums = Tensor::Zeros({2, tokens}, DType::kF64);
  double* m = max_t.data<double>();
  double* s = sums.data<double>();
  double* label_logit = s + tokens;
  std::fill_n(m, tokens, -std::numeric_limits<double>::infinity());
  if (hidden.dtype() == DType::kF64) {
    LocalStatistics<double>(hidden2, weight, label, vocab_begin, chunk, m, s, label_logit);
  } else {
    LocalStatistics<float>(hidden2, weight, label, vocab_begin, chunk, m, s, label_logit);
  }
  if (tp_->size() > 1) {
    const Tensor local_max = max_t.Clone();
    tp_->AllReduceSync(max_t, ReduceOp::kMax);
    const double* lm = local_max.data<double>();
    for (int64_t r = 0; r < tokens; ++r) s[r] *= std::exp(lm[r] - m[r]);
    tp_->AllReduceSync(sums, ReduceOp::kSum);
  }

  Result result{0.0, 0};
  Tensor lse = Tensor::Empty({tokens}, hidden.dtype());
  // Summed in token order: the same bits for any thread count.
  for (int64_t r = 0; r < tokens; ++r) {
    const double row_lse = m[r] + std::log(s[r]);
    lse.SetFromDouble(r, row_lse);
    if (label[r] < 0) continue;
    result.loss_sum += row_lse - label_logit[r];
    ++result.tokens;
  }
  *saved = Saved{hidden_full, labels, lse};
  return result;
}

Tensor VocabParallelCrossEntropy::Backward(double scale, const Tensor& weight, const Saved& saved,
                                           Tensor* dweight) const {
  MOE_CHECK(saved.hidden.defined())
      << kWho << ": Backward needs the Saved filled by Forward, got an empty one";
  CheckCpuFloat(weight, "weight");
  MOE_CHECK(weight.ndim() == 2 && weight.dim(1) == saved.hidden.dim(-1) &&
            weight.dtype() == saved.hidden.dtype())
      << kWho << ": weight " << weight.Describe() << " does not match hidden "
      << saved.hidden.Describe();
  MOE_CHECK(dweight != nullptr && dweight->shape() == weight.shape() &&
            dweight->dtype() == weight.dtype() && dweight->device() == weight.device())
      << kWho << ": dweight must be like weight " << weight.Describe() << ", got "
      << (dweight != nullptr ? dweight->Describe() : std::string("null"));
  const int64_t chunk = std::min(vocab_chunk_, weight.dim(0));
  const int64_t vocab_begin = tp_->rank() * weight.dim(0);
  Tensor dhidden = Tensor::Empty(saved.hidden.shape(), saved.hidden.dtype());
  Tensor dhidden2 = dhidden.Reshape({saved.lse.numel(), weight.dim(1)});
  if (weight.dtype() == DType::kF64) {
    BackwardCpu<double>(scale, weight, saved, vocab_begin, chunk, &dhidden2, dweight);
  } else {
    BackwardCpu<float>(scale, weight, saved, vocab_begin, chunk, &dhidden2, dweight);
  }
  // Each rank's dhidden comes from its own vocab rows: the sum over TP is it.
  if (sequence_parallel_) return ReduceScatterSequence(kWho, dhidden, tp_);
  if (tp_->size() > 1) tp_->AllReduceSync(dhidden, ReduceOp::kSum);
  return dhidden;
}

}  // namespace moe
