#include "moe/grouped_experts.h"

#include <omp.h>

#include <algorithm>

#include "core/ops/cpu/gemm.h"
#include "core/ops/cpu/swiglu.h"

namespace moe {
namespace {

// Experts run in parallel (each GEMM on one thread) when there are at least
// this many non-empty experts per thread; otherwise each GEMM gets every thread.
constexpr int64_t kExpertsPerThread = 2;

// Validates the configuration before the weights are allocated.
std::string CheckedName(std::string name, int64_t num_experts, int64_t hidden_size,
                        int64_t intermediate_size, DType dtype, Device device) {
  MOE_CHECK(num_experts >= 1) << name << ": num_experts must be >= 1, got " << num_experts;
  MOE_CHECK(hidden_size >= 1 && intermediate_size >= 1)
      << name << ": hidden_size and intermediate_size must be >= 1, got " << hidden_size << " and "
      << intermediate_size;
  MOE_CHECK(device == Device::kCpu)
      << name << ": the CUDA MoE path is not built yet (experts on " << DeviceName(device) << ")";
  MOE_CHECK(dtype == DType::kF32 || dtype == DType::kF64)
      << name << ": CPU experts are kF32 or kF64, got " << DTypeName(dtype);
  return name;
}

// A Parameter whose value and grad are expert e's [rows, cols] slices of the
// grouped tensors.
// `slice`: where the view sits in the expert's whole weight (a part of it
// under expert tensor parallelism).
Parameter ExpertView(std::string name, const Tensor& value, const Tensor& grad, int64_t e,
                     int64_t rows, int64_t cols, ShardSlice slice) {
  Parameter p;
  p.name = std::move(name);
  p.value = value.View(e * rows * cols, {rows, cols});
  p.grad = grad.View(e * rows * cols, {rows, cols});
  p.slice = std::move(slice);
  return p;
}

// How the experts share the threads. A GEMM of a few hundred rows does not
// keep several threads busy and pays a fork/join per call; so when there are
// enough experts, each thread takes whole experts (largest first, dynamically)
// and runs their GEMMs single-threaded (OpenBLAS's OpenMP build does so inside
// a parallel region). Each expert writes only its own rows and weight grads,
// and a GEMM's result does not depend on its thread count, so the choice never
// changes the numbers.
struct ExpertSchedule {
  std::vector<int64_t> order;  // non-empty experts, most rows first
  bool by_expert = false;
};

ExpertSchedule ScheduleExperts(const std::vector<int64_t>& offsets) {
  ExpertSchedule s;
  const int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  for (int64_t e = 0; e < experts; ++e) {
    if (offsets[e + 1] > offsets[e]) s.order.push_back(e);
  }
  std::stable_sort(s.order.begin(), s.order.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  const int64_t threads = omp_get_max_threads();
  s.by_expert = threads > 1 && static_cast<int64_t>(s.order.size()) >= kExpertsPerThread * threads;
  return s;
}

// Per expert e with n rows at offset o (H hidden, I intermediate):
//   gate = rows w1_e^T, up = rows w3_e^T    [n, I]
//   act  = silu(gate) * up
//   out  = act w2_e^T                       [n, H]
template <typename T>
void ForwardRowsCpu(const T* rows, const std::vector<int64_t>& offsets,
                    const std::vector<Parameter>& w1, const std::vector<Parameter>& w2,
                    const std::vector<Parameter>& w3, int64_t hidden, int64_t inter, T* gate, T* up,
                    T* act, T* out) {
  const ExpertSchedule schedule = ScheduleExperts(offsets);
  const int64_t count = static_cast<int64_t>(schedule.order.size());
#pragma omp parallel for schedule(dynamic, 1) if (schedule.by_expert)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t e = schedule.order[i];
    const int64_t o = offsets[e], n = offsets[e + 1] - offsets[e];
    cpu::Gemm<T>(false, true, n, inter, hidden, T(1), rows + o * hidden, hidden,
                 w1[e].value.data<T>(), hidden, T(0), gate + o * inter, inter);
    cpu::Gemm<T>(false, true, n, inter, hidden, T(1), rows + o * hidden, hidden,
                 w3[e].value.data<T>(), hidden, T(0), up + o * inter, inter);
    cpu::SwigluForward(act + o * inter, gate + o * inter, up + o * inter, n * inter);
    cpu::Gemm<T>(false, true, n, hidden, inter, T(1), act + o * inter, inter, w2[e].value.data<T>(),
                 inter, T(0), out + o * hidden, hidden);
  }
}

// The reverse of ForwardRowsCpu, per expert:
//   act = silu(gate) * up                        (recomputed)
//   dact = dout w2_e,  dw2_e += dout^T act
//   dgate, dup = SwiGLU backward
//   dw1_e += dgate^T rows,  dw3_e += dup^T rows
//   drows = dgate w1_e + dup w3_e
template <typename T>
void BackwardRowsCpu(const T* dout, const T* rows, const std::vector<int64_t>& offsets,
                     std::vector<Parameter>& w1, std::vector<Parameter>& w2,
                     std::vector<Parameter>& w3, int64_t hidden, int64_t inter, const T* gate,
                     const T* up, T* scratch_a, T* scratch_b, T* scratch_c, T* drows) {
  const ExpertSchedule schedule = ScheduleExperts(offsets);
  const int64_t count = static_cast<int64_t>(schedule.order.size());
#pragma omp parallel for schedule(dynamic, 1) if (schedule.by_expert)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t e = schedule.order[i];
    const int64_t o = offsets[e], n = offsets[e + 1] - offsets[e];
    T* act = scratch_a + o * inter;
    T* dact = scratch_b + o * inter;
    cpu::SwigluForward(act, gate + o * inter, up + o * inter, n * inter);
    cpu::Gemm<T>(false, false, n, inter, hidden, T(1), dout + o * hidden, hidden,
                 w2[e].value.data<T>(), inter, T(0), dact, inter);
    cpu::Gemm<T>(true, false, hidden, inter, n, T(1), dout + o * hidden, hidden, act, inter, T(1),
                 w2[e].grad.data<T>(), inter);
    // act is dead now: its buffer takes dgate.
    T* dgate = act;
    T* dup = scratch_c + o * inter;
    cpu::SwigluBackward(dgate, dup, dact, gate + o * inter, up + o * inter, n * inter);
    cpu::Gemm<T>(true, false, inter, hidden, n, T(1), dgate, inter, rows + o * hidden, hidden, T(1),
                 w1[e].grad.data<T>(), hidden);
    cpu::Gemm<T>(true, false, inter, hidden, n, T(1), dup, inter, rows + o * hidden, hidden, T(1),
                 w3[e].grad.data<T>(), hidden);
    cpu::Gemm<T>(false, false, n, hidden, inter, T(1), dgate, inter, w1[e].value.data<T>(), hidden,
                 T(0), drows + o * hidden, hidden);
    cpu::Gemm<T>(false, false, n, hidden, inter, T(1), dup, inter, w3[e].value.data<T>(), hidden,
                 T(1), drows + o * hidden, hidden);
  }
}

}  // namespace

GroupedExperts::GroupedExperts(std::string name, int64_t num_experts, int64_t hidden_size,
                               int64_t intermediate_size, DType dtype, Device device,
                               int64_t first_expert, int etp_rank, int etp_size)
    : name_(
          CheckedName(std::move(name), num_experts, hidden_size, intermediate_size, dtype, device)),
      num_experts_(num_experts),
      first_expert_(first_expert),
      hidden_size_(hidden_size),
      intermediate_size_(intermediate_size / etp_size) {
  MOE_CHECK(etp_size >= 1 && etp_rank >= 0 && etp_rank < etp_size &&
            intermediate_size % etp_size == 0)
      << name_ << ": the expert width " << intermediate_size << " must split evenly over "
      << etp_size << " expert-tensor-parallel ranks; choose --expert_tensor_parallel_size "
      << "dividing --ffn_hidden_size";
  const int64_t e = num_experts, h = hidden_size, i = intermediate_size_;
  const int64_t i0 = etp_rank * i;  // this rank's first intermediate row
  w1_EIH_ = Tensor::Empty({e, i, h}, dtype);
  w3_EIH_ = Tensor::Empty({e, i, h}, dtype);
  w2_EHI_ = Tensor::Empty({e, h, i}, dtype);
  dw1_EIH_ = Tensor::Zeros({e, i, h}, dtype);
  dw3_EIH_ = Tensor::Zeros({e, i, h}, dtype);
  dw2_EHI_ = Tensor::Zeros({e, h, i}, dtype);
  for (int64_t x = 0; x < e; ++x) {
    const std::string prefix = name_ + "." + std::to_string(first_expert + x);
    w1_.push_back(ExpertView(prefix + ".w1.weight", w1_EIH_, dw1_EIH_, x, i, h,
                             {{intermediate_size, h}, {i0, 0}}));
    w2_.push_back(ExpertView(prefix + ".w2.weight", w2_EHI_, dw2_EHI_, x, h, i,
                             {{h, intermediate_size}, {0, i0}}));
    w3_.push_back(ExpertView(prefix + ".w3.weight", w3_EIH_, dw3_EIH_, x, i, h,
                             {{intermediate_size, h}, {i0, 0}}));
  }
}

std::vector<Parameter*> GroupedExperts::Parameters() {
  std::vector<Parameter*> params;
  for (int64_t e = 0; e < num_experts_; ++e) {
    AppendParameters(&params, {&w1_[e], &w2_[e], &w3_[e]});
  }
  return params;
}

void GroupedExperts::CheckActivation(const char* what, const Tensor& rows_RH) const {
  MOE_CHECK(rows_RH.device() == Device::kCpu) << name_ << ": " << what << " " << rows_RH.Describe()
                                              << " is on CUDA; the CUDA MoE path is not built yet";
  MOE_CHECK(rows_RH.ndim() == 2 && rows_RH.dim(1) == hidden_size_)
      << name_ << ": " << what << " must be [rows, " << hidden_size_ << "], got "
      << rows_RH.Describe();
  MOE_CHECK(rows_RH.dtype() == w1_EIH_.dtype())
      << name_ << ": " << what << " " << rows_RH.Describe() << " vs weights "
      << DTypeName(w1_EIH_.dtype());
}

void GroupedExperts::CheckRows(const char* what, const Tensor& rows_RH,
                               const std::vector<int64_t>& expert_offsets) const {
  CheckActivation(what, rows_RH);
  MOE_CHECK(static_cast<int64_t>(expert_offsets.size()) == num_experts_ + 1 &&
            expert_offsets.front() == 0 && expert_offsets.back() == rows_RH.dim(0))
      << name_ << ": expert_offsets must have num_experts + 1 = " << num_experts_ + 1
      << " entries from 0 to the row count " << rows_RH.dim(0);
  for (int64_t e = 0; e < num_experts_; ++e) {
    MOE_CHECK(expert_offsets[e] <= expert_offsets[e + 1])
        << name_ << ": expert_offsets must not decrease (expert " << e << ")";
  }
}

Tensor GroupedExperts::ForwardRows(const Tensor& rows_RH,
                                   const std::vector<int64_t>& expert_offsets,
                                   RowsSaved* saved) const {
  CheckRows("rows", rows_RH, expert_offsets);
  const int64_t num_rows = rows_RH.dim(0);
  const DType dtype = rows_RH.dtype();
  saved->gate_RI = Tensor::Empty({num_rows, intermediate_size_}, dtype);
  saved->up_RI = Tensor::Empty({num_rows, intermediate_size_}, dtype);
  Tensor act_RI = Tensor::Empty({num_rows, intermediate_size_}, dtype);
  Tensor out_RH = Tensor::Empty({num_rows, hidden_size_}, dtype);
  if (dtype == DType::kF64) {
    ForwardRowsCpu(rows_RH.data<double>(), expert_offsets, w1_, w2_, w3_, hidden_size_,
                   intermediate_size_, saved->gate_RI.data<double>(), saved->up_RI.data<double>(),
                   act_RI.data<double>(), out_RH.data<double>());
  } else {
    ForwardRowsCpu(rows_RH.data<float>(), expert_offsets, w1_, w2_, w3_, hidden_size_,
                   intermediate_size_, saved->gate_RI.data<float>(), saved->up_RI.data<float>(),
                   act_RI.data<float>(), out_RH.data<float>());
  }
  return out_RH;
}

Tensor GroupedExperts::BackwardRows(const Tensor& dout_RH, const Tensor& rows_RH,
                                    const std::vector<int64_t>& expert_offsets,
                                    const RowsSaved& saved) {
  CheckRows("rows", rows_RH, expert_offsets);
  const int64_t num_rows = rows_RH.dim(0);
  MOE_CHECK(saved.gate_RI.defined() && saved.gate_RI.dim(0) == num_rows)
      << name_ << ": BackwardRows needs the RowsSaved of the ForwardRows of these rows";
  MOE_CHECK(dout_RH.shape() == rows_RH.shape() && dout_RH.dtype() == rows_RH.dtype() &&
            dout_RH.device() == Device::kCpu)
      << name_ << ": dout must be like rows " << rows_RH.Describe() << ", got "
      << dout_RH.Describe();
  const DType dtype = rows_RH.dtype();
  const Shape ri = {num_rows, intermediate_size_};
  Tensor a = Tensor::Empty(ri, dtype), b = Tensor::Empty(ri, dtype), c = Tensor::Empty(ri, dtype);
  Tensor drows_RH = Tensor::Empty(rows_RH.shape(), dtype);
  if (dtype == DType::kF64) {
    BackwardRowsCpu(dout_RH.data<double>(), rows_RH.data<double>(), expert_offsets, w1_, w2_, w3_,
                    hidden_size_, intermediate_size_, saved.gate_RI.data<double>(),
                    saved.up_RI.data<double>(), a.data<double>(), b.data<double>(),
                    c.data<double>(), drows_RH.data<double>());
  } else {
    BackwardRowsCpu(dout_RH.data<float>(), rows_RH.data<float>(), expert_offsets, w1_, w2_, w3_,
                    hidden_size_, intermediate_size_, saved.gate_RI.data<float>(),
                    saved.up_RI.data<float>(), a.data<float>(), b.data<float>(), c.data<float>(),
                    drows_RH.data<float>());
  }
  return drows_RH;
}

Tensor GroupedExperts::Forward(const Tensor& x_TH, const Tensor& ids_TK, const Tensor& weights_TK,
                               Saved* saved) const {
  CheckActivation("input", x_TH);
  MOE_CHECK(ids_TK.dtype() == DType::kI32 && ids_TK.ndim() == 2 && ids_TK.dim(0) == x_TH.dim(0))
      << name_ << ": ids must be i32[" << x_TH.dim(0) << ", top_k], got " << ids_TK.Describe();
  MOE_CHECK(weights_TK.shape() == ids_TK.shape() && weights_TK.dtype() == x_TH.dtype() &&
            weights_TK.device() == Device::kCpu)
      << name_ << ": weights must be " << DTypeName(x_TH.dtype()) << ShapeToString(ids_TK.shape())
      << " on cpu, got " << weights_TK.Describe();
  saved->permutation = BuildPermutation(ids_TK, num_experts_);
  const Permutation& p = saved->permutation;
  const Tensor rows_RH = PermuteRows(x_TH, p);
  saved->out_RH = ForwardRows(rows_RH, p.expert_offsets, &saved->rows);
  saved->x_TH = x_TH;
  saved->weights_TK = weights_TK;
  return UnpermuteSum(saved->out_RH, p, weights_TK);
}

GroupedExperts::Grads GroupedExperts::Backward(const Tensor& dy_TH, const Saved& saved) {
  MOE_CHECK(saved.x_TH.defined()) << name_ << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dy_TH.shape() == saved.x_TH.shape() && dy_TH.dtype() == saved.x_TH.dtype() &&
            dy_TH.device() == Device::kCpu)
      << name_ << ": dy must be like the input " << saved.x_TH.Describe() << ", got "
      << dy_TH.Describe();
  const Permutation& p = saved.permutation;
  Grads grads;
  grads.dweights_TK = RowDots(dy_TH, saved.out_RH, p);
  const Tensor dout_RH = PermuteRows(dy_TH, p, saved.weights_TK);
  const Tensor rows_RH = PermuteRows(saved.x_TH, p);
  const Tensor drows_RH = BackwardRows(dout_RH, rows_RH, p.expert_offsets, saved.rows);
  grads.dx_TH = UnpermuteSum(drows_RH, p);
  return grads;
}

}  // namespace moe
