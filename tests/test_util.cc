#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/io/safetensors.h"
#include "core/philox.h"

namespace moe::testing {

Tensor RandomTensor(const Shape& shape, DType dtype, uint64_t seed, double std) {
  Tensor t = Tensor::Empty(shape, dtype);
  InitNormal(&t, ShardSlice::Whole(shape), seed, /*stream=*/0, 0.0, std);
  return t;
}

Tensor RandomIds(const Shape& shape, int64_t vocab, uint64_t seed) {
  Tensor t = Tensor::Empty(shape, DType::kI32);
  const Philox philox(seed, /*stream=*/1);
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<int32_t>()[i] = static_cast<int32_t>(philox.Block(static_cast<uint64_t>(i))[0] % vocab);
  }
  return t;
}

Tensor ScalarTensor(double value, DType dtype) {
  Tensor t = Tensor::Empty({}, dtype);
  if (dtype == DType::kI64) {
    t.data<int64_t>()[0] = static_cast<int64_t>(value);
  } else {
    t.SetFromDouble(0, value);
  }
  return t;
}

void WriteSafetensorsOrDie(const std::string& path,
                           const std::vector<std::pair<std::string, Tensor>>& entries) {
  const absl::Status status = WriteSafetensors(path, entries);
  MOE_CHECK(status.ok()) << status.message();
  std::printf("wrote %s\n", path.c_str());
}

double MaxRelativeError(const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.numel() == b.numel()) << a.Describe() << " vs " << b.Describe();
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    max_diff = std::max(max_diff, std::abs(a.GetAsDouble(i) - b.GetAsDouble(i)));
    max_ref = std::max(max_ref, std::abs(b.GetAsDouble(i)));
  }
  return max_diff / std::max(max_ref, 1e-300);
}

double Dot(const Tensor& a, const Tensor& b) {
  MOE_CHECK(a.numel() == b.numel()) << a.Describe() << " vs " << b.Describe();
  double sum = 0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += a.GetAsDouble(i) * b.GetAsDouble(i);
  return sum;
}

Tensor NumericalGradient(Tensor x, const std::function<double()>& loss, double h,
                         int64_t max_elements, std::vector<int64_t>* checked) {
  MOE_CHECK(x.dtype() == DType::kF64 && x.device() == Device::kCpu)
      << "finite differences need a kF64 CPU tensor, got " << x.Describe();
  const int64_t n = x.numel();
  Tensor grad = Tensor::Zeros(x.shape(), DType::kF64);
  std::vector<int64_t> indices;
  if (max_elements <= 0 || max_elements >= n) {
    for (int64_t i = 0; i < n; ++i) indices.push_back(i);
  } else {
    for (int64_t j = 0; j < max_elements; ++j) indices.push_back(j * n / max_elements);
  }
  double* data = x.data<double>();
  for (int64_t i : indices) {
    const double original = data[i];
    data[i] = original + h;
    const double plus = loss();
    data[i] = original - h;
    const double minus = loss();
    data[i] = original;
    grad.data<double>()[i] = (plus - minus) / (2 * h);
  }
  if (checked != nullptr) *checked = indices;
  return grad;
}

double GradientError(const Tensor& analytic, const Tensor& numerical,
                     const std::vector<int64_t>& checked) {
  double max_diff = 0, max_ref = 0;
  for (int64_t i : checked) {
    max_diff = std::max(max_diff, std::abs(analytic.GetAsDouble(i) - numerical.GetAsDouble(i)));
    max_ref = std::max(max_ref, std::abs(numerical.GetAsDouble(i)));
  }
  return max_diff / std::max(max_ref, 1e-300);
}

}  // namespace moe::testing
