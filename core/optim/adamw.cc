#include "core/optim/adamw.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moe {
namespace {

// Below this many elements a parameter is updated on one thread: starting the
// team costs more than the update.
// Elements per unit of parallel work in Step.
constexpr int64_t kChunk = 1 << 15;

// The per-step scalars, computed in double and rounded once to T, as PyTorch
// rounds a Python float operand to the tensor's type.
template <typename T>
struct Coefficients {
  T decay;                  // 1 - lr * weight_decay, or 1 without decay
  T lerp_weight;            // 1 - beta1
  T beta2;                  // beta2
  T one_minus_beta2;        // 1 - beta2
  T bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  T neg_step_size;          // -lr / (1 - beta1^step)
  T eps;
};

template <typename T>
Coefficients<T> MakeCoefficients(const AdamW::Options& o, double lr, int64_t step, bool decay) {
  const double s = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, s);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, s);
  Coefficients<T> c;
  c.decay = static_cast<T>(decay ? 1.0 - lr * o.weight_decay : 1.0);
  c.lerp_weight = static_cast<T>(1.0 - o.beta1);
  c.beta2 = static_cast<T>(o.beta2);
  c.one_minus_beta2 = static_cast<T>(1.0 - o.beta2);
  c.bias_correction2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  c.neg_step_size = static_cast<T>(-(lr / bias_correction1));
  c.eps = static_cast<T>(o.eps);
  return c;
}

// One AdamW update of n elements in place. Each line is one PyTorch op of
// _single_tensor_adam, in its order, so the roundings are the same:
// mul_, lerp_, mul_ + addcmul_, sqrt / div + add_, addcdiv_.
// The gradient is read and zeroed in the same pass (the next step
// accumulates into it), which saves a separate memset over every gradient.
template <typename T>
void AdamWUpdate(T* param, T* exp_avg, T* exp_avg_sq, T* grad, int64_t n,
                 const Coefficients<T>& c) {
  // torch.lerp(m, g, w) is m + w * (g - m) for |w| < 0.5 and
  // g - (g - m) * (1 - w) otherwise; both are base + coeff * (g - m).
  const bool small_weight = std::abs(c.lerp_weight) < T(0.5);
  const T lerp_coeff = small_weight ? c.lerp_weight : c.lerp_weight - T(1);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i];
    grad[i] = T(0);
    const T p = param[i] * c.decay;
    const T m_old = exp_avg[i];
    const T m = (small_weight ? m_old : g) + lerp_coeff * (g - m_old);
    const T v = exp_avg_sq[i] * c.beta2 + c.one_minus_beta2 * g * g;
    const T denom = std::sqrt(v) / c.bias_correction2_sqrt + c.eps;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = p + c.neg_step_size * m / denom;
  }
}

void RoundToBf16(const float* master, BFloat16* value, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) value[i].bits = BFloat16::FromFloat(master[i]);
}

// The dtype of a parameter's state and of the math that updates it.
DType StateDType(DType value_dtype) {
  return value_dtype == DType::kF64 ? DType::kF64 : DType::kF32;
}

absl::Status CheckFinite(const char* field, double value) {
  if (std::isfinite(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("AdamW: ", field, " must be finite, got ", value));
}

}  // namespace

bool DefaultNoDecay(const Parameter& param) {
  return param.value.ndim() == 1 || absl::EndsWith(param.name, ".bias");
}

absl::Status AdamW::Validate(const Options& options) {
  for (auto [field, value] :
       {std::pair{"beta1", options.beta1}, std::pair{"beta2", options.beta2},
        std::pair{"eps", options.eps}, std::pair{"weight_decay", options.weight_decay}}) {
    if (absl::Status status = CheckFinite(field, value); !status.ok()) return status;
  }
  for (auto [field, value] :
       {std::pair{"beta1", options.beta1}, std::pair{"beta2", options.beta2}}) {
    if (value < 0 || value >= 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("AdamW: ", field, " must be in [0, 1), got ", value));
    }
  }
  if (options.eps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AdamW: eps must be >= 0, got ", options.eps));
  }
  if (options.weight_decay < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AdamW: weight_decay must be >= 0, got ", options.weight_decay));
  }
  return absl::OkStatus();
}

AdamW::AdamW(std::vector<Parameter*> params) : AdamW(std::move(params), Options{}) {}

AdamW::AdamW(std::vector<Parameter*> params, Options options)
    : params_(std::move(params)), options_(std::move(options)) {
  const absl::Status status = Validate(options_);
  MOE_CHECK(status.ok()) << status.message();
  states_.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const Parameter* param = params_[i];
    MOE_CHECK(param != nullptr) << "AdamW: parameter " << i << " is null";
    const Tensor& value = param->value;
    const Tensor& grad = param->grad;
    MOE_CHECK(value.defined() && grad.defined())
        << "AdamW: " << param->name << " needs both a value and a grad tensor";
    const DType dtype = value.dtype();
    MOE_CHECK(dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF64)
        << "AdamW: " << param->name << " must be f32, bf16 or f64, got " << value.Describe();
    const DType state_dtype = StateDType(dtype);
    MOE_CHECK(grad.shape() == value.shape() && grad.dtype() == state_dtype &&
              grad.device() == value.device())
        << "AdamW: " << param->name << " grad must be " << DTypeName(state_dtype)
        << value.ShapeString() << " on " << DeviceName(value.device()) << ", got "
        << grad.Describe();
    State state;
    state.exp_avg = Tensor::Zeros(value.shape(), state_dtype, value.device());
    state.exp_avg_sq = Tensor::Zeros(value.shape(), state_dtype, value.device());
    if (dtype == DType::kBF16) {
      // Cast runs on the CPU, so a CUDA parameter's master makes a round trip.
      state.master = value.device() == Device::kCpu
                         ? value.Cast(DType::kF32)
                         : value.To(Device::kCpu).Cast(DType::kF32).To(value.device());
    }
    state.decay = !(options_.no_decay && options_.no_decay(*param));
    states_.push_back(std::move(state));
  }
}

void AdamW::set_step(int64_t step) {
  MOE_CHECK(step >= 0) << "AdamW: step must be >= 0, got " << step;
  step_ = step;
}

void AdamW::Step(double lr) {
  MOE_CHECK(std::isfinite(lr) && lr >= 0) << "AdamW::Step: lr must be finite and >= 0, got " << lr;
  for (const Parameter* param : params_) {
    MOE_CHECK(param->value.device() == Device::kCpu)
        << "AdamW: " << param->name << " is on " << DeviceName(param->value.device())
        << "; the CUDA optimizer step is not built yet";
    MOE_CHECK(param->value.dtype() == DType::kF64 || param->value.dtype() == DType::kF32 ||
              param->value.dtype() == DType::kBF16)
        << "AdamW: unsupported dtype for " << param->name;
  }
  ++step_;
  // One parallel loop over chunks of every parameter: a model has many small
  // tensors (each expert's weights, the norms), which one thread per tensor
  // would leave serial.
  struct Chunk {
    size_t param;
    int64_t begin, end;
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = params_[i]->value.numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({i, b, std::min(n, b + kChunk)});
  }
  const int64_t count = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 1) if (count > 1)
  for (int64_t k = 0; k < count; ++k) {
    const Chunk& chunk = chunks[k];
    Parameter& param = *params_[chunk.param];
    State& state = states_[chunk.param];
    const int64_t b = chunk.begin, n = chunk.end - chunk.begin;
    switch (param.value.dtype()) {
      case DType::kF64:
        AdamWUpdate(param.value.data<double>() + b, state.exp_avg.data<double>() + b,
                    state.exp_avg_sq.data<double>() + b, param.grad.data<double>() + b, n,
                    MakeCoefficients<double>(options_, lr, step_, state.decay));
        break;
      case DType::kF32:
        AdamWUpdate(param.value.data<float>() + b, state.exp_avg.data<float>() + b,
                    state.exp_avg_sq.data<float>() + b, param.grad.data<float>() + b, n,
                    MakeCoefficients<float>(options_, lr, step_, state.decay));
        break;
      case DType::kBF16:
        AdamWUpdate(state.master.data<float>() + b, state.exp_avg.data<float>() + b,
                    state.exp_avg_sq.data<float>() + b, param.grad.data<float>() + b, n,
                    MakeCoefficients<float>(options_, lr, step_, state.decay));
        RoundToBf16(state.master.data<float>() + b, param.value.data<BFloat16>() + b, n);
        break;
      default:
        break;  // checked before the loop
    }
  }
}

}  // namespace moe
