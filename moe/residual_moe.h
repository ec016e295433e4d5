// Residual-MoE (DeepSpeed-MoE, "DeepSpeed-MoE: Advancing Mixture-of-Experts
// Inference and Training", Rajbhandari et al. 2022): a dense MLP runs beside
// the routed experts and a learned 2-way softmax mixes them per token:
//
//   c   = softmax(x Wc^T)                     Wc: [2, H] ("<name>.coefficient.weight")
//   y   = c[0] * moe(x) + c[1] * mlp(x)       mlp: DenseMlp "<name>.mlp"
//
// The coefficient has no bias (DeepSpeed's has one); everything else follows
// DeepSpeed's use_residual. MoeLayer calls the pieces around its dispatch:
// ForwardBranch while the tokens travel, Mix once the experts' output is
// back; in backward MoeGrad before the experts and BranchBackward after.
#ifndef MOE_MOE_RESIDUAL_MOE_H_
#define MOE_MOE_RESIDUAL_MOE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/linear.h"
#include "moe/dense_mlp.h"

namespace moe {

class ResidualMoe {
 public:
  struct Saved {
    Linear::Saved coefficient;
    DenseMlp::Saved mlp;
    Tensor c_T2;    // the softmax mixing weights
    Tensor mlp_TH;  // the dense branch's output
    Tensor moe_TH;  // the routed output it was mixed with
  };

  ResidualMoe(std::string name, int64_t hidden_size, int64_t intermediate_size,
              DType dtype = DType::kF32, Device device = Device::kCpu);

  // x_TH [T, H]: the dense branch and the mixing weights.
  void ForwardBranch(const Tensor& x_TH, Saved* saved) const;
  // moe_TH [T, H] -> y_TH = c0 * moe + c1 * mlp.
  Tensor Mix(const Tensor& moe_TH, Saved* saved) const;
  // dy_TH -> d loss / d moe_TH = c0 * dy.
  Tensor MoeGrad(const Tensor& dy_TH, const Saved& saved) const;
  // dy_TH -> this module's part of dx (the dense branch and the
  // coefficient); its weight grads += .
  Tensor BranchBackward(const Tensor& dy_TH, const Saved& saved);

  // coefficient, then the MLP's gate_proj, up_proj, down_proj.
  std::vector<Parameter*> Parameters();

 private:
  std::string name_;
  Linear coefficient_;
  DenseMlp mlp_;
};

}  // namespace moe

#endif  // MOE_MOE_RESIDUAL_MOE_H_
