#include "core/layers/embedding.h"

#include <limits>

#include "core/ops/cpu/embedding.h"

namespace moe {

Embedding::Embedding(std::string name, int64_t vocab, int64_t dim, DType dtype, Device device)
    : vocab_(vocab), dim_(dim), weight_(std::move(name) + ".weight", {vocab, dim}, dtype, device) {
  MOE_CHECK(vocab > 0 && dim > 0) << weight_.name << ": vocab and dim must be positive, got "
                                  << vocab << " and " << dim;
  // Ids are kI32, so a larger table could hold rows no id can name.
  MOE_CHECK(vocab <= std::numeric_limits<int32_t>::max())
      << weight_.name << ": vocab " << vocab << " exceeds the int32 id range";
  MOE_CHECK(device == Device::kCuda || dtype == DType::kF32 || dtype == DType::kF64)
      << weight_.name << ": a CPU Embedding is kF32 or kF64, got " << DTypeName(dtype);
}

Tensor Embedding::Forward(const Tensor& ids, Saved* saved) const {
  const Tensor& w = weight_.value;
  MOE_CHECK(ids.device() == Device::kCpu && w.device() == Device::kCpu)
      << weight_.name << ": the CUDA embedding is not built yet; ids " << ids.Describe()
      << ", weight " << w.Describe();
  MOE_CHECK(ids.dtype() == DType::kI32)
      << weight_.name << ": ids must be i32, got " << ids.Describe();
  const int64_t n = ids.numel();
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < n; ++t) {
    MOE_CHECK(id[t] >= 0 && id[t] < vocab_)
        << weight_.name << ": token id " << id[t] << " at flat position " << t << " of ids "
        << ids.ShapeString() << " is outside the vocabulary [0, " << vocab_ << ")";
  }
  Shape out_shape = ids.shape();
  out_shape.push_back(dim_);
  Tensor out = Tensor::Empty(out_shape, w.dtype());
  if (w.dtype() == DType::kF64) {
    cpu::EmbeddingForward(out.data<double>(), id, w.data<double>(), n, dim_);
  } else {
    cpu::EmbeddingForward(out.data<float>(), id, w.data<float>(), n, dim_);
  }
  saved->ids = ids;
  return out;
}

void Embedding::Backward(const Tensor& dout, const Saved& saved) {
  const Tensor& ids = saved.ids;
  MOE_CHECK(ids.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  Shape out_shape = ids.shape();
  out_shape.push_back(dim_);
  MOE_CHECK(dout.shape() == out_shape && dout.dtype() == weight_.grad.dtype() &&
            dout.device() == Device::kCpu)
      << weight_.name << ": dout must be " << DTypeName(weight_.grad.dtype())
      << ShapeToString(out_shape) << " on cpu, got " << dout.Describe();
  if (dout.dtype() == DType::kF64) {
    cpu::EmbeddingBackward(weight_.grad.data<double>(), dout.data<double>(), ids.data<int32_t>(),
                           ids.numel(), vocab_, dim_);
  } else {
    cpu::EmbeddingBackward(weight_.grad.data<float>(), dout.data<float>(), ids.data<int32_t>(),
                           ids.numel(), vocab_, dim_);
  }
}

}  // namespace moe
