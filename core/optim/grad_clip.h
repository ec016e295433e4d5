// Global-norm gradient clipping, split the way a model-parallel run needs it:
//
//   double sq = GradSquaredNorm(local_params);   // this rank's shards
//   (all-reduce sq over the model-parallel groups; count replicated params once)
//   double norm = ClipGradNorm(local_params, max_norm, sq);
//   if (!std::isfinite(norm)) { /* see below */ }
//
// The rule is Megatron-LM's (clip_grad_norm_fp32) and PyTorch's
// (clip_grad_norm_): coeff = max_norm / (norm + 1e-6), and the grads are
// scaled by coeff when coeff < 1, so a clipped gradient has norm max_norm up
// to that 1e-6.
//
// A NaN or infinite norm leaves the gradients untouched and is returned as
// is. The caller must not apply the step (AdamW::Step would write NaN into the
// weights and both moments, for good): report the iteration, zero the grads,
// and either stop (Megatron's --check_for_nan_in_loss_and_grad) or skip the
// update and go on with the next batch.
//
// Gradients are kF32 (also for kBF16 parameters) or kF64, on the CPU; CUDA
// gradients fail with a message (the CUDA path is not built yet).
#ifndef MOE_CORE_OPTIM_GRAD_CLIP_H_
#define MOE_CORE_OPTIM_GRAD_CLIP_H_

#include <vector>

#include "core/layers/parameter.h"

namespace moe {

// Sum of squares of every element of every grad, accumulated in double. The
// summation order depends only on the sizes (fixed blocks, combined in
// order), not on the thread count, so the result is reproducible.
double GradSquaredNorm(const std::vector<Parameter*>& params);

// norm = sqrt(total_squared_norm); scales every grad by max_norm / (norm + 1e-6)
// when that is < 1 and returns norm (before clipping). max_norm must be > 0.
double ClipGradNorm(const std::vector<Parameter*>& params, double max_norm,
                    double total_squared_norm);

// Both steps for a single process: ClipGradNorm(params, max_norm, GradSquaredNorm(params)).
double ClipGradNormLocal(const std::vector<Parameter*>& params, double max_norm);

}  // namespace moe

#endif  // MOE_CORE_OPTIM_GRAD_CLIP_H_
