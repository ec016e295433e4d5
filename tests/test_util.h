// Helpers shared by the test suites: random tensors, error measures, and
// central finite differences for gradient checks.
#ifndef MOE_TESTS_TEST_UTIL_H_
#define MOE_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moe::testing {

// Normal(0, std^2) entries drawn with Philox(seed) (CPU; floating dtype).
Tensor RandomTensor(const Shape& shape, DType dtype, uint64_t seed, double std = 1.0);
// Token ids uniform in [0, vocab) as kI32.
Tensor RandomIds(const Shape& shape, int64_t vocab, uint64_t seed);

// A 0-dimensional tensor holding `value` (integer dtypes exactly up to 2^63).
Tensor ScalarTensor(double value, DType dtype);

// Writes `entries` as a safetensors file at `path` (CHECK-fails on error) and
// prints "wrote PATH": the reference dumps' output step.
void WriteSafetensorsOrDie(const std::string& path,
                           const std::vector<std::pair<std::string, Tensor>>& entries);

// max_i |a_i - b_i| / max_i |b_i|: the error relative to the reference b's
// scale, so elements near zero do not dominate. Both CPU, any floating dtype.
double MaxRelativeError(const Tensor& a, const Tensor& b);
// sum_i a_i * b_i in double.
double Dot(const Tensor& a, const Tensor& b);

// Central differences (f(x + h e_i) - f(x - h e_i)) / 2h of `loss` with respect
// to each element of `x` (a kF64 CPU tensor perturbed in place and restored).
// With max_elements > 0, only that many elements (spread evenly) are checked;
// the others are left 0 in the result and `checked` lists the indices done.
Tensor NumericalGradient(Tensor x, const std::function<double()>& loss, double h = 1e-5,
                         int64_t max_elements = 0, std::vector<int64_t>* checked = nullptr);

// Error of an analytic gradient against NumericalGradient, relative to the
// numerical gradient's largest magnitude, over the checked elements.
double GradientError(const Tensor& analytic, const Tensor& numerical,
                     const std::vector<int64_t>& checked);

}  // namespace moe::testing

#endif  // MOE_TESTS_TEST_UTIL_H_
