#include "core/optim/adamw.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomTensor;

// fp32 against the double reference over 5 steps: each step rounds p, m and v
// at ~6e-8 relative and Adam's normalised update does not amplify that for
// gradients of unit scale, so 1e-6 (relative to each tensor's largest
// magnitude) leaves a wide margin and still catches any wrong term.
constexpr double kFloatTolerance = 1e-6;
// kF64 runs the same formulas in double: only the operation order differs.
constexpr double kDoubleTolerance = 1e-13;
constexpr int kSteps = 5;
constexpr double kLrs[kSteps] = {1e-3, 3e-3, 2e-2, 5e-4, 1e-2};

// Textbook AdamW in double (Loshchilov & Hutter, Algorithm 2 with PyTorch's
// placement of eps): written independently of the optimizer's form.
struct Reference {
  std::vector<double> p, m, v;
  bool decay = true;

  Reference(const Tensor& value, bool decay_in)
      : p(value.numel()), m(value.numel(), 0.0), v(value.numel(), 0.0), decay(decay_in) {
    for (int64_t i = 0; i < value.numel(); ++i) p[i] = value.GetAsDouble(i);
  }

  void Step(const Tensor& grad, double lr, int step, const AdamW::Options& o) {
    for (size_t i = 0; i < p.size(); ++i) {
      const double g = grad.GetAsDouble(static_cast<int64_t>(i));
      if (decay) p[i] -= lr * o.weight_decay * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(o.beta1, step));
      const double v_hat = v[i] / (1 - std::pow(o.beta2, step));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + o.eps);
    }
  }
};

Tensor FromDoubles(const std::vector<double>& values, const Shape& shape) {
  Tensor t = Tensor::Empty(shape, DType::kF64);
  for (int64_t i = 0; i < t.numel(); ++i) t.SetFromDouble(i, values[static_cast<size_t>(i)]);
  return t;
}

bool AllZero(const Tensor& t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (t.GetAsDouble(i) != 0) return false;
  }
  return true;
}

// A 2-D weight, a 1-D norm weight (not decayed by default) and an odd-sized
// 2-D weight, with random values and a fresh random gradient every step.
std::vector<std::unique_ptr<Parameter>> MakeParams(DType dtype) {
  std::vector<std::unique_ptr<Parameter>> params;
  const std::vector<std::pair<std::string, Shape>> specs = {
      {"layers.0.mlp.w1.weight", {6, 10}},
      {"layers.0.input_layernorm.weight", {10}},
      {"layers.0.attn.q_proj.weight", {7, 3}}};
  uint64_t seed = 100;
  for (const auto& [name, shape] : specs) {
    params.push_back(std::make_unique<Parameter>(name, shape, dtype, Device::kCpu));
    params.back()->value.CopyFrom(RandomTensor(shape, dtype, ++seed));
  }
  return params;
}

std::vector<Parameter*> Pointers(const std::vector<std::unique_ptr<Parameter>>& params) {
  std::vector<Parameter*> out;
  for (const auto& p : params) out.push_back(p.get());
  return out;
}

void CheckAgainstReference(DType dtype, const AdamW::Options& options, double tolerance) {
  auto params = MakeParams(dtype);
  std::vector<Reference> reference;
  for (const auto& p : params) reference.emplace_back(p->value, p->value.ndim() != 1);
  AdamW adamw(Pointers(params), options);
  for (int step = 1; step <= kSteps; ++step) {
    for (size_t i = 0; i < params.size(); ++i) {
      Parameter& p = *params[i];
      // Gradients of scales 0.1, 0.3, 0.5, different for every step and parameter.
      p.grad.CopyFrom(RandomTensor(p.value.shape(), dtype, 1000 * step + i, 0.1 + 0.2 * i));
      reference[i].Step(p.grad, kLrs[step - 1], step, options);
    }
    adamw.Step(kLrs[step - 1]);
    EXPECT_EQ(adamw.step(), step);
    for (const auto& p : params) EXPECT_TRUE(AllZero(p->grad)) << p->name << " grad not zeroed";
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const Shape& shape = params[i]->value.shape();
    const AdamW::State& state = adamw.state(i);
    EXPECT_LT(MaxRelativeError(params[i]->value, FromDoubles(reference[i].p, shape)), tolerance)
        << params[i]->name;
    EXPECT_LT(MaxRelativeError(state.exp_avg, FromDoubles(reference[i].m, shape)), tolerance)
        << params[i]->name;
    EXPECT_LT(MaxRelativeError(state.exp_avg_sq, FromDoubles(reference[i].v, shape)), tolerance)
        << params[i]->name;
  }
}

TEST(AdamWTest, Float32MatchesDoubleReference) {
  CheckAgainstReference(DType::kF32, AdamW::Options{}, kFloatTolerance);
}

// beta1 < 0.5 takes torch.lerp's other branch; a larger weight decay and eps
// make both terms visible.
TEST(AdamWTest, Float32MatchesDoubleReferenceOtherHyperparameters) {
  AdamW::Options options;
  options.beta1 = 0.3;
  options.beta2 = 0.95;
  options.eps = 1e-3;
  options.weight_decay = 0.5;
  CheckAgainstReference(DType::kF32, options, kFloatTolerance);
}

TEST(AdamWTest, Float64MatchesDoubleReference) {
  AdamW::Options options;
  options.weight_decay = 0.1;
  CheckAgainstReference(DType::kF64, options, kDoubleTolerance);
}

// With zero gradients the Adam term is exactly 0 (m = v = 0, 0 / eps), so one
// step is the decoupled decay alone: p * float(1 - lr * wd), bit for bit.
TEST(AdamWTest, OneDimensionalParametersAreNotDecayed) {
  auto params = MakeParams(DType::kF32);
  std::vector<Tensor> before;
  for (const auto& p : params) before.push_back(p->value.Clone());
  AdamW::Options options;
  options.weight_decay = 0.5;
  AdamW adamw(Pointers(params), options);
  EXPECT_TRUE(adamw.state(0).decay);
  EXPECT_FALSE(adamw.state(1).decay);
  adamw.Step(0.1);
  const float factor = static_cast<float>(1.0 - 0.1 * 0.5);
  for (size_t i = 0; i < params.size(); ++i) {
    const bool decayed = params[i]->value.ndim() != 1;
    for (int64_t j = 0; j < before[i].numel(); ++j) {
      const float expected = before[i].data<float>()[j] * (decayed ? factor : 1.0f);
      ASSERT_EQ(params[i]->value.data<float>()[j], expected) << params[i]->name << "[" << j << "]";
    }
  }
}

TEST(AdamWTest, DefaultNoDecayIsMegatronRule) {
  EXPECT_TRUE(DefaultNoDecay(Parameter("model.norm.weight", {8}, DType::kF32, Device::kCpu)));
  EXPECT_TRUE(DefaultNoDecay(Parameter("proj.bias", {2, 4}, DType::kF32, Device::kCpu)));
  EXPECT_FALSE(DefaultNoDecay(Parameter("proj.weight", {2, 4}, DType::kF32, Device::kCpu)));
}

TEST(AdamWTest, NoDecayPredicateReplacesDefault) {
  auto params = MakeParams(DType::kF32);
  AdamW::Options decay_all;
  decay_all.no_decay = nullptr;
  AdamW all(Pointers(params), decay_all);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(all.state(i).decay) << i;

  AdamW::Options by_name;
  by_name.no_decay = [](const Parameter& p) { return p.name.find("q_proj") != std::string::npos; };
  AdamW named(Pointers(params), by_name);
  EXPECT_TRUE(named.state(0).decay);
  EXPECT_TRUE(named.state(1).decay);
  EXPECT_FALSE(named.state(2).decay);
}

// A bf16 parameter is updated through its fp32 master: the master follows the
// fp32 run bit for bit, and the value is its bf16 rounding after every step.
TEST(AdamWTest, Bf16ParametersFollowFp32ThroughMasters) {
  const Shape shape = {5, 12};
  Parameter p16("w", shape, DType::kBF16, Device::kCpu);
  Parameter p32("w", shape, DType::kF32, Device::kCpu);
  p16.value.CopyFrom(RandomTensor(shape, DType::kBF16, 7));
  p32.value.CopyFrom(p16.value.Cast(DType::kF32));
  AdamW a16({&p16}, AdamW::Options{});
  AdamW a32({&p32}, AdamW::Options{});
  ASSERT_TRUE(a16.state(0).master.defined());
  EXPECT_EQ(a16.state(0).master.dtype(), DType::kF32);
  EXPECT_FALSE(a32.state(0).master.defined());
  for (int step = 1; step <= kSteps; ++step) {
    const Tensor grad = RandomTensor(shape, DType::kF32, 50 + step);
    p16.grad.CopyFrom(grad);
    p32.grad.CopyFrom(grad);
    a16.Step(kLrs[step - 1]);
    a32.Step(kLrs[step - 1]);
    const float* master = a16.state(0).master.data<float>();
    for (int64_t i = 0; i < p32.value.numel(); ++i) {
      ASSERT_EQ(master[i], p32.value.data<float>()[i]) << "step " << step << " element " << i;
      ASSERT_EQ(p16.value.data<BFloat16>()[i].bits, BFloat16::FromFloat(master[i]));
    }
  }
}

// Updates far below a bf16 ulp are kept by the master: ten steps of ~1e-4 on
// weights of 1.0 (bf16 spacing 2^-8 below 1) move the master to ~0.999 while
// the bf16 value still rounds to 1.
TEST(AdamWTest, Bf16MasterAccumulatesUpdatesBelowBf16Resolution) {
  Parameter p("w", {16}, DType::kBF16, Device::kCpu);
  p.value.CopyFrom(Tensor::FromVector({16}, std::vector<float>(16, 1.0f), DType::kBF16));
  AdamW::Options options;
  options.weight_decay = 0;
  AdamW adamw({&p}, options);
  for (int step = 0; step < 10; ++step) {
    p.grad.CopyFrom(Tensor::FromVector({16}, std::vector<float>(16, 1.0f)));
    adamw.Step(1e-4);
  }
  // With a constant gradient m_hat / sqrt(v_hat) = 1, so each step moves by lr
  // (up to eps / sqrt(v_hat) ~ 1e-8 relative).
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_NEAR(adamw.state(0).master.data<float>()[i], 1.0 - 10 * 1e-4, 1e-6);
    EXPECT_EQ(p.value.GetAsDouble(i), 1.0);
  }
}

TEST(AdamWTest, StateShapesAndStepCounter) {
  auto params = MakeParams(DType::kF32);
  AdamW adamw(Pointers(params));
  EXPECT_EQ(adamw.step(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(adamw.state(i).exp_avg.shape(), params[i]->value.shape());
    EXPECT_EQ(adamw.state(i).exp_avg_sq.dtype(), DType::kF32);
    EXPECT_TRUE(AllZero(adamw.state(i).exp_avg_sq));
  }
  adamw.set_step(41);
  adamw.Step(1e-3);
  EXPECT_EQ(adamw.step(), 42);
}

TEST(AdamWTest, ValidateNamesTheField) {
  const auto message = [](auto mutate) {
    AdamW::Options options;
    mutate(options);
    const absl::Status status = AdamW::Validate(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  };
  EXPECT_TRUE(AdamW::Validate(AdamW::Options{}).ok());
  EXPECT_NE(message([](auto& o) { o.beta1 = 1.0; }).find("beta1"), std::string::npos);
  EXPECT_NE(message([](auto& o) { o.beta2 = -0.1; }).find("beta2"), std::string::npos);
  EXPECT_NE(message([](auto& o) { o.eps = -1e-8; }).find("eps"), std::string::npos);
  EXPECT_NE(message([](auto& o) { o.weight_decay = NAN; }).find("weight_decay"), std::string::npos);
}

TEST(AdamWDeathTest, BadOptionsDieAtConstruction) {
  Parameter p("w", {4}, DType::kF32, Device::kCpu);
  AdamW::Options options;
  options.beta2 = 1.5;
  EXPECT_DEATH(AdamW({&p}, options), "AdamW: beta2 must be in \\[0, 1\\)");
}

TEST(AdamWDeathTest, WrongGradientNamesTheParameter) {
  Parameter p("layers.3.w2.weight", {4, 4}, DType::kF32, Device::kCpu);
  p.grad = Tensor::Zeros({4, 5}, DType::kF32);
  EXPECT_DEATH(AdamW({&p}, AdamW::Options{}),
               "AdamW: layers.3.w2.weight grad must be f32\\[4, 4\\]");
}

TEST(AdamWDeathTest, NegativeLearningRate) {
  Parameter p("w", {4}, DType::kF32, Device::kCpu);
  AdamW adamw({&p});
  EXPECT_DEATH(adamw.Step(-1e-3), "lr must be finite and >= 0");
}

}  // namespace
}  // namespace moe
