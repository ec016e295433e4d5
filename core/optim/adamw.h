// AdamW (Loshchilov & Hutter) with exactly the update of torch.optim.AdamW
// (its for-loop implementation, which is what PyTorch runs on the CPU):
//
//   step += 1                                  (the first update uses step 1)
//   p    *= 1 - lr * weight_decay              (decoupled decay; skipped for no-decay params)
//   m     = lerp(m, g, 1 - beta1)
//   v     = v * beta2 + (1 - beta2) * g * g
//   p    += -(lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
//
// The scalar coefficients are computed in double and rounded once to the
// state's type; the element math runs in float (kF32 and kBF16 parameters) in
// PyTorch's operation order, so that an fp32 run tracks PyTorch to rounding.
//
// State per parameter, allocated at construction on the parameter's device:
//   kF32 parameter:  exp_avg, exp_avg_sq kF32
//   kBF16 parameter: exp_avg, exp_avg_sq kF32 and `master`, an fp32 copy of
//                    the weights. The master is the truth: each step updates
//                    it and writes its bf16 rounding back into value, so that
//                    updates smaller than a bf16 ulp still accumulate.
//   kF64 parameter:  exp_avg, exp_avg_sq kF64, math in double (CPU tests).
// Gradients are the Parameter's grad (kF32 for kBF16 values); Step zeroes them.
//
// Weight decay follows Megatron-LM: parameters for which Options::no_decay
// returns true are not decayed. The default, DefaultNoDecay, exempts 1-D
// parameters (RMSNorm weights, biases) and names ending in ".bias", which is
// Megatron's default rule (megatron/core/optimizer: `name.endswith(".bias") or
// len(param.shape) == 1`).
//
// The CPU step is implemented; a CUDA parameter fails in Step with a message
// (the CUDA optimizer step is not built yet).
#ifndef MOE_CORE_OPTIM_ADAMW_H_
#define MOE_CORE_OPTIM_ADAMW_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "core/layers/parameter.h"
#include "core/tensor.h"

namespace moe {

// Megatron's default: true for 1-D parameters and names ending in ".bias".
bool DefaultNoDecay(const Parameter& param);

class AdamW {
 public:
  struct Options {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.01;
    // Parameters for which this returns true get no weight decay. An empty
    // function decays every parameter.
    std::function<bool(const Parameter&)> no_decay = DefaultNoDecay;
  };

  // Optimizer state of one parameter; tensors are shallow handles, so a
  // checkpoint loader can CopyFrom into them.
  struct State {
    Tensor exp_avg;     // first moment m
    Tensor exp_avg_sq;  // second moment v
    Tensor master;      // fp32 weights of a kBF16 parameter; undefined otherwise
    bool decay = true;  // whether weight decay applies (fixed at construction)
  };

  // Checks the options as user input: betas in [0, 1), eps >= 0 and
  // weight_decay >= 0, all finite. The message names the field.
  static absl::Status Validate(const Options& options);

  // `params` must outlive the optimizer. Dies on invalid options (call
  // Validate first for a recoverable error) or an unsupported parameter.
  AdamW(std::vector<Parameter*> params, Options options);
  explicit AdamW(std::vector<Parameter*> params);  // default Options

  // One update of every parameter with learning rate `lr`, then zeroes the
  // gradients. Callers that clip should do so before (see grad_clip.h), and
  // skip this call when the gradient norm is not finite.
  void Step(double lr);

  const Options& options() const { return options_; }
  const std::vector<Parameter*>& params() const { return params_; }
  // Number of Step calls so far (the bias-correction exponent of the last one).
  int64_t step() const { return step_; }
  // For restoring a checkpoint together with the state tensors.
  void set_step(int64_t step);

  State& state(size_t i) { return states_[i]; }
  const State& state(size_t i) const { return states_[i]; }

 private:
  std::vector<Parameter*> params_;
  Options options_;
  std::vector<State> states_;
  int64_t step_ = 0;
};

}  // namespace moe

#endif  // MOE_CORE_OPTIM_ADAMW_H_
