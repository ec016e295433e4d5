// Rotary position embedding on the CPU, split-half ("rotate_half") form as in
// Hugging Face Llama/Mixtral: for i < D/2, with angle = pos * theta^(-2i/D),
//   y[i]       = x[i] cos - x[i + D/2] sin
//   y[i + D/2] = x[i + D/2] cos + x[i] sin
//   x, y, dx, dy: [batch, seq, heads, head_dim]
//   cos, sin: [positions, head_dim / 2], computed in double (RopeTables)
// Token s of every sequence has position pos_offset + s. y may alias x.
// Backward is the inverse rotation (dx may alias dy).
#ifndef MOE_CORE_OPS_CPU_ROPE_H_
#define MOE_CORE_OPS_CPU_ROPE_H_

#include <cstdint>

namespace moe::cpu {

// Fills cos/sin [positions, head_dim / 2] for base theta.
template <typename T>
void RopeTables(T* cos, T* sin, int64_t positions, int64_t head_dim, double theta);

template <typename T>
void RopeForward(T* y, const T* x, const T* cos, const T* sin, int64_t batch, int64_t seq,
                 int64_t heads, int64_t head_dim, int64_t pos_offset);

template <typename T>
void RopeBackward(T* dx, const T* dy, const T* cos, const T* sin, int64_t batch, int64_t seq,
                  int64_t heads, int64_t head_dim, int64_t pos_offset);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_ROPE_H_
