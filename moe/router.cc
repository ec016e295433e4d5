#include "moe/router.h"

#include <algorithm>
#include <cmath>

#include "core/ops/cpu/gemm.h"

namespace moe {
namespace {

// Rows per statistics chunk. The per-chunk partial sums are added in chunk
// order, so the statistics do not depend on the number of threads.
constexpr int64_t kStatsChunk = 256;

// Validates the configuration before the weight is allocated.
std::string CheckedName(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k,
                        DType dtype, Device device) {
  MOE_CHECK(num_experts >= 1) << name << ": num_experts must be >= 1, got " << num_experts;
  MOE_CHECK(top_k >= 1 && top_k <= num_experts)
      << name << ": top_k must be in [1, num_experts = " << num_experts << "], got " << top_k;
  MOE_CHECK(hidden_size >= 1) << name << ": hidden_size must be >= 1, got " << hidden_size;
  MOE_CHECK(device == Device::kCpu)
      << name << ": the CUDA MoE path is not built yet (router on " << DeviceName(device) << ")";
  MOE_CHECK(dtype == DType::kF32 || dtype == DType::kF64)
      << name << ": a CPU router is kF32 or kF64, got " << DTypeName(dtype);
  return name;
}

// Log-sum-exp of one row of logits, in double.
template <typename T>
double RowLogSumExp(const T* logits, int64_t num_experts) {
  double m = static_cast<double>(logits[0]);
  for (int64_t e = 1; e < num_experts; ++e) m = std::max(m, static_cast<double>(logits[e]));
  double s = 0;
  for (int64_t e = 0; e < num_experts; ++e) s += std::exp(static_cast<double>(logits[e]) - m);
  return m + std::log(s);
}

// Top-k of one row by insertion, descending; a later expert must be strictly
// larger to pass an earlier one, so ties go to the lower index.
template <typename T>
void RowTopK(const T* logits, int64_t num_experts, int64_t top_k, int32_t* ids) {
  int64_t filled = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const T v = logits[e];
    if (filled == top_k && !(v > logits[ids[top_k - 1]])) continue;
    int64_t pos = std::min(filled, top_k - 1);
    while (pos > 0 && v > logits[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = static_cast<int32_t>(e);
    filled = std::min(filled + 1, top_k);
  }
}

template <typename T>
void ForwardCpu(const Tensor& x, const Tensor& w, int64_t top_k, Routing* out) {
  const int64_t tokens = x.dim(0), hidden = x.dim(1), experts = w.dim(0);
  T* logits = out->logits_TE.template data<T>();
  cpu::Gemm<T>(false, true, tokens, experts, hidden, T(1), x.data<T>(), hidden, w.data<T>(), hidden,
               T(0), logits, experts);
  int32_t* ids = out->ids_TK.data<int32_t>();
  T* weights = out->weights_TK.template data<T>();
  const int64_t chunks = (tokens + kStatsChunk - 1) / kStatsChunk;
  // Per chunk: prob sums [E] then the z sum.
  std::vector<double> partial(static_cast<size_t>(chunks * (experts + 1)), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double* prob_sums = partial.data() + c * (experts + 1);
    const int64_t end = std::min(tokens, (c + 1) * kStatsChunk);
    for (int64_t t = c * kStatsChunk; t < end; ++t) {
      const T* row = logits + t * experts;
      const double lse = RowLogSumExp(row, experts);
      for (int64_t e = 0; e < experts; ++e) {
        prob_sums[e] += std::exp(static_cast<double>(row[e]) - lse);
      }
      prob_sums[experts] += lse * lse;
      int32_t* row_ids = ids + t * top_k;
      RowTopK(row, experts, top_k, row_ids);
      double chosen_sum = 0;
      for (int64_t j = 0; j < top_k; ++j) {
        chosen_sum += std::exp(static_cast<double>(row[row_ids[j]]) - lse);
      }
      for (int64_t j = 0; j < top_k; ++j) {
        weights[t * top_k + j] =
            static_cast<T>(std::exp(static_cast<double>(row[row_ids[j]]) - lse) / chosen_sum);
      }
    }
  }
  RouterStats& stats = out->stats;
  stats.rows = tokens;
  stats.choice_counts.assign(static_cast<size_t>(experts), 0.0);
  stats.prob_sums.assign(static_cast<size_t>(experts), 0.0);
  stats.z_sum = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const double* prob_sums = partial.data() + c * (experts + 1);
    for (int64_t e = 0; e < experts; ++e) stats.prob_sums[e] += prob_sums[e];
    stats.z_sum += prob_sums[experts];
  }
  for (int64_t i = 0; i < tokens * top_k; ++i) stats.choice_counts[ids[i]] += 1;
}

// d loss / d logits for every row, then dx and d gate by two GEMMs.
template <typename T>
void BackwardCpu(const Tensor& dweights, const std::vector<double>& daux_dprob, double z_scale,
                 const Router::Saved& saved, const Tensor& w, Tensor* dw, Tensor* dx,
                 bool accumulate) {
  const Tensor& x = saved.x_TH;
  const int64_t tokens = x.dim(0), hidden = x.dim(1), experts = w.dim(0);
  const int64_t top_k = saved.ids_TK.dim(1);
  const T* logits = saved.logits_TE.data<T>();
  const int32_t* ids = saved.ids_TK.data<int32_t>();
  const T* g = dweights.data<T>();
  const double* daux = daux_dprob.empty() ? nullptr : daux_dprob.data();
  Tensor dlogits_TE = Tensor::Empty({tokens, experts}, x.dtype());
  T* dlogits = dlogits_TE.data<T>();
#pragma omp parallel
  {
    std::vector<double> p(static_cast<size_t>(experts)), dp(static_cast<size_t>(experts));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* row = logits + t * experts;
      const double lse = RowLogSumExp(row, experts);
      for (int64_t e = 0; e < experts; ++e) {
        p[e] = std::exp(static_cast<double>(row[e]) - lse);
        dp[e] = daux == nullptr ? 0.0 : daux[e];
      }
      // weights_j = p_j / S over the chosen j, so
      // d loss / d p_j = (g_j - sum_i g_i weights_i) / S.
      const int32_t* row_ids = ids + t * top_k;
      const T* row_g = g + t * top_k;
      double chosen_sum = 0;
      for (int64_t j = 0; j < top_k; ++j) chosen_sum += p[row_ids[j]];
      double g_dot_w = 0;
      for (int64_t j = 0; j < top_k; ++j) {
        g_dot_w += static_cast<double>(row_g[j]) * p[row_ids[j]] / chosen_sum;
      }
      for (int64_t j = 0; j < top_k; ++j) {
        dp[row_ids[j]] += (static_cast<double>(row_g[j]) - g_dot_w) / chosen_sum;
      }
      // Softmax backward, plus d(z_scale * lse^2) / d logit_e = 2 z_scale lse p_e.
      double p_dot_dp = 0;
      for (int64_t e = 0; e < experts; ++e) p_dot_dp += p[e] * dp[e];
      const double z_term = 2.0 * z_scale * lse;
      for (int64_t e = 0; e < experts; ++e) {
        dlogits[t * experts + e] = static_cast<T>(p[e] * (dp[e] - p_dot_dp + z_term));
      }
    }
  }
  // dx [T, H] (+)= dlogits [T, E] gate [E, H]; d gate [E, H] += dlogits^T x.
  cpu::Gemm<T>(false, false, tokens, hidden, experts, T(1), dlogits, experts, w.data<T>(), hidden,
               accumulate ? T(1) : T(0), dx->data<T>(), hidden);
  cpu::Gemm<T>(true, false, experts, hidden, tokens, T(1), dlogits, experts, x.data<T>(), hidden,
               T(1), dw->data<T>(), hidden);
}

}  // namespace

void RouterStats::Add(const RouterStats& other) {
  if (choice_counts.empty() && rows == 0) {
    choice_counts.assign(other.choice_counts.size(), 0.0);
    prob_sums.assign(other.prob_sums.size(), 0.0);
  }
  MOE_CHECK(choice_counts.size() == other.choice_counts.size() &&
            prob_sums.size() == other.prob_sums.size())
      << "RouterStats::Add: pooling routers with " << choice_counts.size() << " and "
      << other.choice_counts.size() << " experts";
  rows += other.rows;
  for (size_t e = 0; e < choice_counts.size(); ++e) {
    choice_counts[e] += other.choice_counts[e];
    prob_sums[e] += other.prob_sums[e];
  }
  z_sum += other.z_sum;
}

LoadBalancingLoss ComputeLoadBalancingLoss(const RouterStats& pooled, double coefficient,
                                           double loss_scale) {
  MOE_CHECK(pooled.rows > 0 && !pooled.choice_counts.empty() &&
            pooled.prob_sums.size() == pooled.choice_counts.size())
      << "ComputeLoadBalancingLoss: needs the statistics of at least one router row, got "
      << pooled.rows << " rows and " << pooled.choice_counts.size() << " experts";
  const size_t experts = pooled.choice_counts.size();
  const double n = static_cast<double>(pooled.rows);
  const double e_count = static_cast<double>(experts);
  LoadBalancingLoss result;
  result.daux_dprob.resize(experts);
  for (size_t e = 0; e < experts; ++e) {
    const double f = pooled.choice_counts[e] / n;
    result.aux += e_count * f * (pooled.prob_sums[e] / n);
    result.daux_dprob[e] = coefficient * loss_scale * e_count * f / n;
  }
  result.loss = coefficient * result.aux;
  return result;
}

ZLoss ComputeZLoss(const RouterStats& layer, double coefficient, double loss_scale) {
  MOE_CHECK(layer.rows > 0) << "ComputeZLoss: needs at least one router row";
  const double n = static_cast<double>(layer.rows);
  ZLoss result;
  result.z = layer.z_sum / n;
  result.loss = coefficient * result.z;
  result.z_scale = coefficient * loss_scale / n;
  return result;
}

Router::Router(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k,
               DType dtype, Device device)
    : hidden_size_(hidden_size),
      num_experts_(num_experts),
      top_k_(top_k),
      weight_(
          CheckedName(std::move(name), hidden_size, num_experts, top_k, dtype, device) + ".weight",
          {num_experts, hidden_size}, dtype, device) {}

Routing Router::Forward(const Tensor& x_TH, Saved* saved) const {
  const Tensor& w = weight_.value;
  MOE_CHECK(x_TH.device() == Device::kCpu) << weight_.name << ": input " << x_TH.Describe()
                                           << " is on CUDA; the CUDA MoE path is not built yet";
  MOE_CHECK(x_TH.ndim() == 2 && x_TH.dim(1) == hidden_size_)
      << weight_.name << ": input must be [tokens, " << hidden_size_ << "], got "
      << x_TH.Describe();
  MOE_CHECK(x_TH.dtype() == w.dtype())
      << weight_.name << ": input " << x_TH.Describe() << " vs weight " << w.Describe();
  const int64_t tokens = x_TH.dim(0);
  Routing routing;
  routing.logits_TE = Tensor::Empty({tokens, num_experts_}, x_TH.dtype());
  routing.ids_TK = Tensor::Empty({tokens, top_k_}, DType::kI32);
  routing.weights_TK = Tensor::Empty({tokens, top_k_}, x_TH.dtype());
  if (x_TH.dtype() == DType::kF64) {
    ForwardCpu<double>(x_TH, w, top_k_, &routing);
  } else {
    ForwardCpu<float>(x_TH, w, top_k_, &routing);
  }
  saved->x_TH = x_TH;
  saved->logits_TE = routing.logits_TE;
  saved->ids_TK = routing.ids_TK;
  return routing;
}

Tensor Router::Backward(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                        double z_scale, const Saved& saved) {
  MOE_CHECK(saved.x_TH.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  Tensor dx = Tensor::Empty(saved.x_TH.shape(), saved.x_TH.dtype());
  BackwardInto(dweights_TK, daux_dprob_E, z_scale, saved, &dx, /*accumulate=*/false);
  return dx;
}

void Router::BackwardAccumulate(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                                double z_scale, const Saved& saved, Tensor* dx_TH) {
  MOE_CHECK(saved.x_TH.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dx_TH->shape() == saved.x_TH.shape() && dx_TH->dtype() == saved.x_TH.dtype() &&
            dx_TH->device() == Device::kCpu)
      << weight_.name << ": dx must be like the input " << saved.x_TH.Describe() << ", got "
      << dx_TH->Describe();
  BackwardInto(dweights_TK, daux_dprob_E, z_scale, saved, dx_TH, /*accumulate=*/true);
}

void Router::BackwardInto(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                          double z_scale, const Saved& saved, Tensor* dx_TH, bool accumulate) {
  MOE_CHECK(dweights_TK.shape() == saved.ids_TK.shape() &&
            dweights_TK.dtype() == saved.x_TH.dtype() && dweights_TK.device() == Device::kCpu)
      << weight_.name << ": dweights must be " << DTypeName(saved.x_TH.dtype())
      << ShapeToString(saved.ids_TK.shape()) << " on cpu, got " << dweights_TK.Describe();
  MOE_CHECK(daux_dprob_E.empty() || static_cast<int64_t>(daux_dprob_E.size()) == num_experts_)
      << weight_.name << ": daux_dprob must have num_experts = " << num_experts_
      << " entries (or none), got " << daux_dprob_E.size();
  if (saved.x_TH.dtype() == DType::kF64) {
    BackwardCpu<double>(dweights_TK, daux_dprob_E, z_scale, saved, weight_.value, &weight_.grad,
                        dx_TH, accumulate);
  } else {
    BackwardCpu<float>(dweights_TK, daux_dprob_E, z_scale, saved, weight_.value, &weight_.grad,
                       dx_TH, accumulate);
  }
}

}  // namespace moe
