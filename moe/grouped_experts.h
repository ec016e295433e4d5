// E SwiGLU experts applied to routed tokens (Hugging Face MixtralExperts):
//   y_TH[t] = sum_j weights_TK[t, j] * w2_e(silu(w1_e x_t) * w3_e x_t),  e = ids_TK[t, j]
// Shape suffixes: see moe/permutation.h.
//
// Two levels, so that a token dispatcher can sit in the middle:
//   - rows: ForwardRows / BackwardRows take rows already grouped by expert
//     (expert e owns rows [offsets[e], offsets[e + 1])) and run one GEMM per
//     expert and projection; experts with no rows are skipped.
//   - tokens: Forward / Backward wrap the rows level with the single-rank
//     permutation (moe/permutation.h): gather, experts, weighted unpermute.
//
// Weights: each kind is one grouped tensor, w1 [E, I, H] (through silu),
// w3 [E, I, H] (up), w2 [E, H, I] (down), with a Parameter per expert whose
// value and grad are views into it, named as Hugging Face saves them:
// "<name>.{e}.w1.weight" etc. (name = "model.layers.0.block_sparse_moe.experts").
// The kernels read every expert's weights through its Parameter, so a model
// that rebinds value/grad to views of a flat buffer keeps working.
#ifndef MOE_MOE_GROUPED_EXPERTS_H_
#define MOE_MOE_GROUPED_EXPERTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layers/parameter.h"
#include "moe/permutation.h"

namespace moe {

class GroupedExperts {
 public:
  // What BackwardRows needs besides the rows themselves: the two
  // pre-activations [R, I]. The activation silu(gate) * up is recomputed
  // (one elementwise pass) rather than saved.
  struct RowsSaved {
    Tensor gate_RI;
    Tensor up_RI;
  };
  // What Backward needs. The gathered rows [R, H] are not saved: Backward
  // gathers them again from x (a copy, cheap next to the GEMMs), which saves
  // K * T * H of activation memory. out_RH (each expert's unweighted output)
  // is saved for d weights = <dy, out>.
  struct Saved {
    Tensor x_TH;
    Tensor weights_TK;
    Permutation permutation;
    RowsSaved rows;
    Tensor out_RH;
  };
  struct Grads {
    Tensor dx_TH;
    Tensor dweights_TK;
  };

  // Values are left uninitialised (the model fills them); grads start at zero.
  // CPU kF32 or kF64. Under expert parallelism a rank holds the experts
  // [first_expert, first_expert + num_experts) of the layer: local expert e
  // is named (and initialised) as global expert first_expert + e. Under
  // expert tensor parallelism it holds rows [r I / ETP, (r + 1) I / ETP) of
  // each expert's w1 and w3 and those columns of w2 (r = etp_rank), and its
  // outputs are partial sums over the ETP group (moe/expert_tensor_exchange.h);
  // each Parameter's slice says which part it holds.
  GroupedExperts(std::string name, int64_t num_experts, int64_t hidden_size,
                 int64_t intermediate_size, DType dtype = DType::kF32, Device device = Device::kCpu,
                 int64_t first_expert = 0, int etp_rank = 0, int etp_size = 1);

  // x_TH [T, H], ids_TK kI32 [T, K], weights_TK [T, K] -> y_TH [T, H].
  Tensor Forward(const Tensor& x_TH, const Tensor& ids_TK, const Tensor& weights_TK,
                 Saved* saved) const;
  // dy_TH [T, H] -> dx_TH (=), dweights_TK (=); expert grads += .
  Grads Backward(const Tensor& dy_TH, const Saved& saved);

  // rows_RH [R, H] grouped by expert, expert_offsets [E + 1] -> out_RH [R, H].
  Tensor ForwardRows(const Tensor& rows_RH, const std::vector<int64_t>& expert_offsets,
                     RowsSaved* saved) const;
  // dout_RH [R, H], the same rows_RH and offsets as the forward -> drows_RH
  // (=); expert grads += .
  Tensor BackwardRows(const Tensor& dout_RH, const Tensor& rows_RH,
                      const std::vector<int64_t>& expert_offsets, const RowsSaved& saved);

  // Per expert e: w1, w2, w3 (Hugging Face's state-dict order).
  std::vector<Parameter*> Parameters();
  Parameter& w1(int64_t e) { return w1_[e]; }
  Parameter& w2(int64_t e) { return w2_[e]; }
  Parameter& w3(int64_t e) { return w3_[e]; }
  // The grouped storage: w1/w3 [E, I, H], w2 [E, H, I].
  const Tensor& w1_EIH() const { return w1_EIH_; }
  const Tensor& w3_EIH() const { return w3_EIH_; }
  const Tensor& w2_EHI() const { return w2_EHI_; }
  // Their gradients, the same layout.
  const Tensor& w1_grad_EIH() const { return dw1_EIH_; }
  const Tensor& w3_grad_EIH() const { return dw3_EIH_; }
  const Tensor& w2_grad_EHI() const { return dw2_EHI_; }
  int64_t num_experts() const { return num_experts_; }  // held by this rank
  int64_t first_expert() const { return first_expert_; }
  int64_t hidden_size() const { return hidden_size_; }
  int64_t intermediate_size() const {
    return intermediate_size_;
  }  // held by this rank  // held by this rank
  const std::string& name() const { return name_; }

 private:
  void CheckActivation(const char* what, const Tensor& rows_RH) const;
  void CheckRows(const char* what, const Tensor& rows_RH,
                 const std::vector<int64_t>& expert_offsets) const;

  std::string name_;
  int64_t num_experts_;
  int64_t first_expert_;
  int64_t hidden_size_;
  int64_t intermediate_size_;
  Tensor w1_EIH_, w3_EIH_, w2_EHI_;      // values
  Tensor dw1_EIH_, dw3_EIH_, dw2_EHI_;   // grads
  std::vector<Parameter> w1_, w2_, w3_;  // per-expert views of the above
};

}  // namespace moe

#endif  // MOE_MOE_GROUPED_EXPERTS_H_
