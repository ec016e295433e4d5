// SwiGLU activation on the CPU: out = silu(gate) * up, silu(a) = a / (1 + e^-a).
//   gate, up, out, dgate, dup, dout: [n]
// Gradient rule: dgate =, dup = (activations).
// fp32 uses a vectorisable exp (within 2 ulp); fp64 uses std::exp.
#ifndef MOE_CORE_OPS_CPU_SWIGLU_H_
#define MOE_CORE_OPS_CPU_SWIGLU_H_

#include <cstdint>

namespace moe::cpu {

template <typename T>
void SwigluForward(T* out, const T* gate, const T* up, int64_t n);

template <typename T>
void SwigluBackward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

}  // namespace moe::cpu

#endif  // MOE_CORE_OPS_CPU_SWIGLU_H_
