#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/layers/chunked_lm_head.h"
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
    chunked_lm_head::Statistics<double>(hidden2, weight, label, vocab_begin, chunk, m, s,
                                        label_logit);
  } else {
    chunked_lm_head::Statistics<float>(hidden2, weight, label, vocab_begin, chunk, m, s,
                                       label_logit);
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
  const Tensor hidden2 = saved.hidden.Reshape({saved.lse.numel(), weight.dim(1)});
  const int32_t* label = saved.labels.data<int32_t>();
  if (weight.dtype() == DType::kF64) {
    chunked_lm_head::Backward<double>(scale, hidden2, weight, label, saved.lse.data<double>(),
                                      vocab_begin, chunk, &dhidden2, dweight);
  } else {
    chunked_lm_head::Backward<float>(scale, hidden2, weight, label, saved.lse.data<float>(),
                                     vocab_begin, chunk, &dhidden2, dweight);
  }
  // Each rank's dhidden comes from its own vocab rows: the sum over TP is it.
  if (sequence_parallel_) return ReduceScatterSequence(kWho, dhidden, tp_);
  if (tp_->size() > 1) tp_->AllReduceSync(dhidden, ReduceOp::kSum);
  return dhidden;
}

}  // namespace moe
