// RMSNorm layer (Mixtral's input_layernorm / post_attention_layernorm / norm):
// y = x / sqrt(mean(x^2) + eps) * weight over the last dimension.
#ifndef MOE_CORE_LAYERS_RMSNORM_H_
#define MOE_CORE_LAYERS_RMSNORM_H_

#include <string>
#include <vector>

#include "core/layers/parameter.h"

namespace moe {

class RmsNorm {
 public:
  // What backward needs: the input and 1/rms per row.
  struct Saved {
    Tensor x;
    Tensor inv_rms;
  };

  // weight [dim] starts at ones, as in Hugging Face.
  RmsNorm(std::string name, int64_t dim, double eps, DType dtype = DType::kF32,
          Device device = Device::kCpu);

  // x: [..., dim] -> y: same shape.
  Tensor Forward(const Tensor& x, Saved* saved) const;
  // dy: like y -> dx (returned); weight.grad += .
  Tensor Backward(const Tensor& dy, const Saved& saved);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }

 private:
  int64_t dim_;
  double eps_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_RMSNORM_H_
