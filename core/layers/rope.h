// Rotary position embedding, split-half ("rotate_half") form exactly as in
// Hugging Face Llama/Mixtral: inv_freq_i = theta^(-2i/D) for i < D/2, the pair
// (x[i], x[i + D/2]) of a token at position p is rotated by p * inv_freq_i.
// No parameters. The cos/sin tables [max_positions, head_dim / 2] are
// computed once in double and stored in the layer dtype on the CPU, in kF32
// on CUDA (whose kernels take fp32 tables for any activation dtype).
#ifndef MOE_CORE_LAYERS_ROPE_H_
#define MOE_CORE_LAYERS_ROPE_H_

#include <cstdint>

#include "core/tensor.h"

namespace moe {

class Rope {
 public:
  Rope(int64_t head_dim, int64_t max_positions, double theta, DType dtype = DType::kF32,
       Device device = Device::kCpu);

  // x: [batch, seq, heads, head_dim] -> y: same shape. Token s has position
  // pos_offset + s (a continued sequence, a context-parallel chunk), which
  // must stay below max_positions.
  Tensor Forward(const Tensor& x, int64_t pos_offset = 0) const;
  // dy -> dx = the inverse rotation of dy (the layer is linear, so it needs
  // nothing saved).
  Tensor Backward(const Tensor& dy, int64_t pos_offset = 0) const;

  int64_t head_dim() const { return head_dim_; }
  int64_t max_positions() const { return max_positions_; }
  const Tensor& cos() const { return cos_; }
  const Tensor& sin() const { return sin_; }

 private:
  void CheckInput(const Tensor& x, const char* what, int64_t pos_offset) const;

  int64_t head_dim_;
  int64_t max_positions_;
  DType dtype_;
  Device device_;
  Tensor cos_;
  Tensor sin_;
};

}  // namespace moe

#endif  // MOE_CORE_LAYERS_ROPE_H_
