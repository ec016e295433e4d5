#include "moe/residual_moe.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/check.h"
#include "core/layers/residual.h"

namespace moe {
namespace {

template <typename T>
void Softmax2(T* c, const T* logits, int64_t tokens) {
  for (int64_t t = 0; t < tokens; ++t) {
    const T m = std::max(logits[2 * t], logits[2 * t + 1]);
    const T a = std::exp(logits[2 * t] - m), b = std::exp(logits[2 * t + 1] - m);
    c[2 * t] = a / (a + b);
    c[2 * t + 1] = b / (a + b);
  }
}

// out[t] = scale[t, j] * in[t] (+ out[t] when accumulate).
template <typename T>
void ScaleRows(T* out, const T* in, const T* c, int64_t j, int64_t tokens, int64_t hidden,
               bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const T s = c[2 * t + j];
    for (int64_t h = 0; h < hidden; ++h) {
      const T v = s * in[t * hidden + h];
      out[t * hidden + h] = accumulate ? out[t * hidden + h] + v : v;
    }
  }
}

// d logits of the 2-way softmax: c * (g - <c, g>), g_j = <dy_t, branch_j[t]>.
template <typename T>
void CoefficientGrad(T* dlogits, const T* dy, const T* moe, const T* mlp, const T* c,
                     int64_t tokens, int64_t hidden) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    T g0 = 0, g1 = 0;
    for (int64_t h = 0; h < hidden; ++h) {
      g0 += dy[t * hidden + h] * moe[t * hidden + h];
      g1 += dy[t * hidden + h] * mlp[t * hidden + h];
    }
    const T mean = c[2 * t] * g0 + c[2 * t + 1] * g1;
    dlogits[2 * t] = c[2 * t] * (g0 - mean);
    dlogits[2 * t + 1] = c[2 * t + 1] * (g1 - mean);
  }
}

}  // namespace

ResidualMoe::ResidualMoe(std::string name, int64_t hidden_size, int64_t intermediate_size,
                         DType dtype, Device device)
    : name_(std::move(name)),
      coefficient_(name_ + ".coefficient", hidden_size, 2, dtype, device),
      mlp_(name_ + ".mlp", hidden_size, intermediate_size, dtype, device) {}

void ResidualMoe::ForwardBranch(const Tensor& x_TH, Saved* saved) const {
  MOE_CHECK(x_TH.ndim() == 2) << name_ << ": input must be [tokens, hidden], got "
                              << x_TH.Describe();
  saved->mlp_TH = mlp_.Forward(x_TH, &saved->mlp);
  const Tensor logits = coefficient_.Forward(x_TH, &saved->coefficient);
  saved->c_T2 = Tensor::Empty(logits.shape(), logits.dtype());
  if (logits.dtype() == DType::kF64) {
    Softmax2(saved->c_T2.data<double>(), logits.data<double>(), logits.dim(0));
  } else {
    Softmax2(saved->c_T2.data<float>(), logits.data<float>(), logits.dim(0));
  }
}

Tensor ResidualMoe::Mix(const Tensor& moe_TH, Saved* saved) const {
  MOE_CHECK(moe_TH.shape() == saved->mlp_TH.shape())
      << name_ << ": the routed output " << moe_TH.Describe() << " must be like the dense one "
      << saved->mlp_TH.Describe() << " (call ForwardBranch first)";
  saved->moe_TH = moe_TH;
  Tensor y = Tensor::Empty(moe_TH.shape(), moe_TH.dtype());
  const int64_t tokens = moe_TH.dim(0), hidden = moe_TH.dim(1);
  if (y.dtype() == DType::kF64) {
    const double* c = saved->c_T2.data<double>();
    ScaleRows(y.data<double>(), moe_TH.data<double>(), c, 0, tokens, hidden, false);
    ScaleRows(y.data<double>(), saved->mlp_TH.data<double>(), c, 1, tokens, hidden, true);
  } else {
    const float* c = saved->c_T2.data<float>();
    ScaleRows(y.data<float>(), moe_TH.data<float>(), c, 0, tokens, hidden, false);
    ScaleRows(y.data<float>(), saved->mlp_TH.data<float>(), c, 1, tokens, hidden, true);
  }
  return y;
}

Tensor ResidualMoe::MoeGrad(const Tensor& dy_TH, const Saved& saved) const {
  Tensor d = Tensor::Empty(dy_TH.shape(), dy_TH.dtype());
  const int64_t tokens = dy_TH.dim(0), hidden = dy_TH.dim(1);
  if (d.dtype() == DType::kF64) {
    ScaleRows(d.data<double>(), dy_TH.data<double>(), saved.c_T2.data<double>(), 0, tokens, hidden,
              false);
  } else {
    ScaleRows(d.data<float>(), dy_TH.data<float>(), saved.c_T2.data<float>(), 0, tokens, hidden,
              false);
  }
  return d;
}

Tensor ResidualMoe::BranchBackward(const Tensor& dy_TH, const Saved& saved) {
  const int64_t tokens = dy_TH.dim(0), hidden = dy_TH.dim(1);
  Tensor dmlp = Tensor::Empty(dy_TH.shape(), dy_TH.dtype());
  Tensor dlogits = Tensor::Empty({tokens, 2}, dy_TH.dtype());
  if (dy_TH.dtype() == DType::kF64) {
    const double* c = saved.c_T2.data<double>();
    ScaleRows(dmlp.data<double>(), dy_TH.data<double>(), c, 1, tokens, hidden, false);
    CoefficientGrad(dlogits.data<double>(), dy_TH.data<double>(), saved.moe_TH.data<double>(),
                    saved.mlp_TH.data<double>(), c, tokens, hidden);
  } else {
    const float* c = saved.c_T2.data<float>();
    ScaleRows(dmlp.data<float>(), dy_TH.data<float>(), c, 1, tokens, hidden, false);
    CoefficientGrad(dlogits.data<float>(), dy_TH.data<float>(), saved.moe_TH.data<float>(),
                    saved.mlp_TH.data<float>(), c, tokens, hidden);
  }
  Tensor dx = mlp_.Backward(dmlp, saved.mlp);
  ResidualAccumulate(name_.c_str(), &dx, coefficient_.Backward(dlogits, saved.coefficient));
  return dx;
}

std::vector<Parameter*> ResidualMoe::Parameters() {
  std::vector<Parameter*> params = {&coefficient_.weight()};
  for (Parameter* p : mlp_.Parameters()) params.push_back(p);
  return params;
}

}  // namespace moe
