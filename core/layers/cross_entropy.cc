#include "core/layers/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/layers/chunked_lm_head.h"

namespace moe {
namespace {

void CheckCpuFloat(const Tensor& t, const char* name) {
  MOE_CHECK(t.device() == Device::kCpu)
      << "CrossEntropy: the CUDA fused LM-head loss is not built yet (" << name << " is "
      << t.Describe() << ")";
  MOE_CHECK(t.dtype() == DType::kF32 || t.dtype() == DType::kF64)
      << "CrossEntropy: " << name << " must be f32 or f64 on the CPU, got " << t.Describe();
}

template <typename T>
CrossEntropy::Result ForwardCpu(const Tensor& hidden, const Tensor& weight, const Tensor& labels,
                                int64_t chunk, Tensor* lse) {
  const int64_t tokens = hidden.dim(0);
  const int32_t* label = labels.data<int32_t>();
  std::vector<double> m(static_cast<size_t>(tokens), -std::numeric_limits<double>::infinity());
  std::vector<double> s(static_cast<size_t>(tokens), 0.0);
  std::vector<double> label_logit(static_cast<size_t>(tokens), 0.0);
  chunked_lm_head::Statistics<T>(hidden, weight, label, /*vocab_begin=*/0, chunk, m.data(),
                                 s.data(), label_logit.data());
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
  const int32_t* label = saved.labels.data<int32_t>();
  if (weight.dtype() == DType::kF64) {
    chunked_lm_head::Backward<double>(scale, saved.hidden, weight, label, saved.lse.data<double>(),
                                      0, chunk, &dhidden, dweight);
  } else {
    chunked_lm_head::Backward<float>(scale, saved.hidden, weight, label, saved.lse.data<float>(), 0,
                                     chunk, &dhidden, dweight);
  }
  return dhidden;
}

}  // namespace moe
