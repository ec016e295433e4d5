// CUDA kernels behind the layers, at the Tensor level. Every tensor lives on
// the CUDA device. Activations are kF32 or kBF16 (one dtype per call);
// reductions and saved statistics are fp32. Each function checks its
// arguments' shapes and dtypes at entry and names the offending tensor.
// The calls are asynchronous on the current (default) stream; Synchronize()
// waits for them.
//
// In a build without CUDA, these are defined by cuda_unavailable.cc and fail
// with a message saying so.
#ifndef MOE_CORE_OPS_CUDA_KERNELS_H_
#define MOE_CORE_OPS_CUDA_KERNELS_H_

#include "core/tensor.h"

namespace moe::cuda {

void Synchronize();

// c = alpha * op(a) op(b) + beta * c, row-major 2-D tensors (cuBLAS, fp32
// accumulation). a and b share a dtype; c is that dtype or kF32.
void Gemm(bool trans_a, bool trans_b, float alpha, const Tensor& a, const Tensor& b, float beta,
          Tensor* c);

// x, y: [rows, dim]; weight: [dim] (x's dtype); inv_rms: [rows] kF32.
void RmsNormForward(const Tensor& x, const Tensor& weight, double eps, Tensor* y, Tensor* inv_rms);
// dx: like x (=); dweight: [dim] kF32 (+=), summed in a fixed order, so
// bit-identical from run to run.
void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& weight, const Tensor& inv_rms,
                     Tensor* dx, Tensor* dweight);

// x, y: [batch, seq, heads, head_dim]; cos, sin: [positions, head_dim / 2] kF32.
// Same rotation as cpu::RopeForward; y may alias x.
void RopeForward(const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t pos_offset,
                 Tensor* y);
void RopeBackward(const Tensor& dy, const Tensor& cos, const Tensor& sin, int64_t pos_offset,
                  Tensor* dx);

// out = silu(gate) * up, all the same shape and dtype.
void SwigluForward(const Tensor& gate, const Tensor& up, Tensor* out);
void SwigluBackward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor* dgate,
                    Tensor* dup);

// logits: [rows, vocab]; labels: [rows] kI32 (< 0 ignored); losses, lse: [rows] kF32.
// A label >= vocab traps in the kernel (labels stay on the GPU, so it cannot
// be checked on the host without a sync): the next CUDA call then fails.
void CrossEntropyForward(const Tensor& logits, const Tensor& labels, Tensor* losses, Tensor* lse);
// dlogits (like logits) = scale * (softmax - onehot); zero rows for ignored labels.
void CrossEntropyBackward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                          float scale, Tensor* dlogits);

}  // namespace moe::cuda

#endif  // MOE_CORE_OPS_CUDA_KERNELS_H_
