// Linear layer without bias (Mixtral's projections have none):
// y = x W^T with weight W [out_features, in_features], the layout Hugging Face
// stores, so checkpoints load without a transpose.
#ifndef MOE_CORE_LAYERS_LINEAR_H_
#define MOE_CORE_LAYERS_LINEAR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"

namespace moe {

class Linear {
 public:
  // What backward needs: the input (for dW = dy^T x).
  struct Saved {
    Tensor x;
  };

  // The weight "<name>.weight" is left uninitialised: the model fills it with
  // Philox keyed by global index (so every parallel layout draws the same
  // values) or loads it from a checkpoint. Its grad starts at zero.
  Linear(std::string name, int64_t in_features, int64_t out_features, DType dtype = DType::kF32,
         Device device = Device::kCpu);

  // x: [..., in] -> y: [..., out]; all leading dimensions are flattened into
  // one GEMM.
  Tensor Forward(const Tensor& x, Saved* saved) const;
  // dy: [..., out] -> dx = dy W (returned, =); weight.grad += dy^T x.
  Tensor Backward(const Tensor& dy, const Saved& saved);

  Parameter& weight() { return weight_; }
  std::vector<Parameter*> Parameters() { return {&weight_}; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Parameter weight_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_LINEAR_H_
