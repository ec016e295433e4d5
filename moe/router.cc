#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/ops/cpu/gemm.h"

namespace moe {
namespace {

// Rows per statistics chunk. The per-chunk partial sums are added in chunk
// order, so the statistics do not depend on the number of threads.
constexpr int64_t kStatsChunk = 256;

// Validates the configuration before the weight is allocated.
std::string CheckedName(std::string name, int64_t hidden_size, const RouterOptions& options,
                        DType dtype, Device device) {
  const absl::Status status = ValidateRouterOptions(options);
  MOE_CHECK(status.ok()) << name << ": " << status.message();
  MOE_CHECK(hidden_size >= 1) << name << ": hidden_size must be >= 1, got " << hidden_size;
  MOE_CHECK(device == Device::kCpu)
      << name << ": the CUDA MoE path is not built yet (router on " << DeviceName(device) << ")";
  MOE_CHECK(dtype == DType::kF32 || dtype == DType::kF64)
      << name << ": a CPU router is kF32 or kF64, got " << DTypeName(dtype);
  return name;
}

RouterOptions MixtralOptions(int64_t num_experts, int64_t top_k) {
  RouterOptions options;
  options.num_experts = num_experts;
  options.top_k = top_k;
  return options;
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

// Top-k of keys[0, n) by insertion, descending; a later entry must be
// strictly larger to pass an earlier one, so ties go to the lower index.
void TopK(const double* keys, int64_t n, int64_t k, int32_t* ids) {
  int64_t filled = 0;
  for (int64_t e = 0; e < n; ++e) {
    const double v = keys[e];
    if (filled == k && !(v > keys[ids[k - 1]])) continue;
    int64_t pos = std::min(filled, k - 1);
    while (pos > 0 && v > keys[ids[pos - 1]]) {
      ids[pos] = ids[pos - 1];
      --pos;
    }
    ids[pos] = static_cast<int32_t>(e);
    filled = std::min(filled + 1, k);
  }
}

// Per-thread buffers for one row.
struct RowScratch {
  explicit RowScratch(const RouterOptions& o)
      : p(o.num_experts),
        s(o.num_experts),
        q(o.num_experts),
        dq(o.num_experts),
        ds(o.num_experts),
        key(o.num_experts),
        masked(o.num_experts),
        group_key(std::max<int64_t>(o.num_groups, 1)),
        pick(o.num_experts),
        plain(o.num_experts) {}
  std::vector<double> p;  // softmax over all E
  std::vector<double> s;  // sigmoid (sigmoid scores only)
  std::vector<double> q;  // the balance scores (see router_losses.h)
  std::vector<double> dq, ds;
  std::vector<double> key, masked, group_key;
  std::vector<int32_t> pick, plain;
};

// Fills p (softmax), s (sigmoid scores only) and q; returns logsumexp.
template <typename T>
double Scores(const RouterOptions& o, const T* row, RowScratch* w) {
  const int64_t experts = o.num_experts;
  const double lse = RowLogSumExp(row, experts);
  for (int64_t e = 0; e < experts; ++e) w->p[e] = std::exp(static_cast<double>(row[e]) - lse);
  if (o.score_function == ScoreFunction::kSoftmax) {
    w->q = w->p;
    return lse;
  }
  double sum = 0;
  for (int64_t e = 0; e < experts; ++e) {
    w->s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(row[e])));
    sum += w->s[e];
  }
  for (int64_t e = 0; e < experts; ++e) w->q[e] = w->s[e] / sum;
  return lse;
}

// Top-k of `keys`, among the experts of the group_topk groups whose top
// (top_k / group_topk) keys sum highest when groups are on.
void SelectTopK(const RouterOptions& o, const double* keys, RowScratch* w, int32_t* ids) {
  const int64_t experts = o.num_experts, top_k = o.top_k;
  if (o.num_groups == 0) {
    TopK(keys, experts, top_k, ids);
    return;
  }
  const int64_t per_group = experts / o.num_groups, per_group_k = top_k / o.group_topk;
  for (int64_t g = 0; g < o.num_groups; ++g) {
    TopK(keys + g * per_group, per_group, per_group_k, w->pick.data());
    double sum = 0;
    for (int64_t j = 0; j < per_group_k; ++j) sum += keys[g * per_group + w->pick[j]];
    w->group_key[g] = sum;
  }
  TopK(w->group_key.data(), o.num_groups, o.group_topk, w->pick.data());
  std::fill(w->masked.begin(), w->masked.end(), -INFINITY);
  for (int64_t j = 0; j < o.group_topk; ++j) {
    const int64_t first = w->pick[j] * per_group;
    std::copy(keys + first, keys + first + per_group, w->masked.begin() + first);
  }
  TopK(w->masked.data(), experts, top_k, ids);
}

// Where one row's statistics go: prob sums, choice counts, routed counts
// ([E] each), then the z and entropy sums.
struct StatsOut {
  double* prob_sums;
  double* choice_counts;
  double* routed_counts;
  double* z_sum;
  double* entropy_sum;
};

template <typename T>
void RouteRow(const RouterOptions& o, const float* bias, const T* row, RowScratch* w, int32_t* ids,
              T* weights, const StatsOut& out) {
  const int64_t experts = o.num_experts, width = o.width();
  const double lse = Scores(o, row, w);
  const std::vector<double>& q = w->q;
  double entropy = 0;
  for (int64_t e = 0; e < experts; ++e) {
    out.prob_sums[e] += q[e];
    if (q[e] > 0) entropy -= q[e] * std::log(q[e]);
  }
  *out.z_sum += lse * lse;
  *out.entropy_sum += entropy;

  const int32_t* plain = ids;  // the unbiased, ungrouped choice
  if (o.top_p()) {
    std::vector<int32_t>& order = w->pick;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [row](int32_t a, int32_t b) { return row[a] > row[b]; });
    double cumulative = 0;
    int64_t used = 0;
    while (used < width) {
      cumulative += w->p[order[used]];
      ++used;
      if (cumulative >= o.topp) break;
    }
    for (int64_t j = 0; j < width; ++j) {
      ids[j] = j < used ? order[j] : -1;
      weights[j] = j < used ? static_cast<T>(w->p[order[j]]) : T(0);
    }
    for (int64_t j = 0; j < used; ++j) {
      out.choice_counts[ids[j]] += 1;
      out.routed_counts[ids[j]] += 1;
    }
    return;
  }

  const bool sigmoid = o.score_function == ScoreFunction::kSigmoid;
  const std::vector<double>& unbiased = sigmoid ? w->s : o.pre_softmax ? w->p : w->key;
  if (!sigmoid && !o.pre_softmax) {
    for (int64_t e = 0; e < experts; ++e) w->key[e] = static_cast<double>(row[e]);
  }
  if (bias != nullptr) {
    for (int64_t e = 0; e < experts; ++e) w->key[e] = w->s[e] + static_cast<double>(bias[e]);
    SelectTopK(o, w->key.data(), w, ids);
  } else {
    SelectTopK(o, unbiased.data(), w, ids);
  }
  if (bias != nullptr || o.num_groups > 0) {
    TopK(unbiased.data(), experts, o.top_k, w->plain.data());
    plain = w->plain.data();
  }

  // Weights: renormalised over the chosen (softmax; sigmoid with K > 1) or not.
  const std::vector<double>& base = sigmoid ? w->s : w->p;
  const bool renormalise = sigmoid ? o.top_k > 1 : !o.pre_softmax;
  double chosen_sum = 0;
  for (int64_t j = 0; j < o.top_k; ++j) chosen_sum += base[ids[j]];
  const double divisor = renormalise ? chosen_sum : 1.0;
  for (int64_t j = 0; j < o.top_k; ++j) weights[j] = static_cast<T>(base[ids[j]] / divisor);
  for (int64_t j = 0; j < o.top_k; ++j) {
    out.choice_counts[plain[j]] += 1;
    out.routed_counts[ids[j]] += 1;
  }
}

template <typename T>
void ForwardCpu(const RouterOptions& o, const float* bias, const Tensor& x, const Tensor& w,
                int64_t seq_length, Routing* out) {
  const int64_t tokens = x.dim(0), hidden = x.dim(1), experts = o.num_experts;
  const int64_t width = o.width();
  T* logits = out->logits_TE.template data<T>();
  cpu::Gemm<T>(false, true, tokens, experts, hidden, T(1), x.data<T>(), hidden, w.data<T>(), hidden,
               T(0), logits, experts);
  int32_t* ids = out->ids_TK.data<int32_t>();
  T* weights = out->weights_TK.template data<T>();

  // Chunks never straddle a sequence, so per-sequence sums are sums of whole
  // chunks. chunk_begin has one extra entry: the end.
  const int64_t span = seq_length > 0 ? seq_length : std::max<int64_t>(tokens, 1);
  std::vector<int64_t> chunk_begin;
  for (int64_t start = 0; start < tokens; start += span) {
    for (int64_t b = start; b < start + span; b += kStatsChunk) chunk_begin.push_back(b);
  }
  const int64_t chunks = static_cast<int64_t>(chunk_begin.size());
  chunk_begin.push_back(tokens);
  const int64_t stride = 3 * experts + 2;
  std::vector<double> partial(static_cast<size_t>(chunks * stride), 0.0);
#pragma omp parallel
  {
    RowScratch scratch(o);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      double* p = partial.data() + c * stride;
      const StatsOut stats_out{p, p + experts, p + 2 * experts, p + 3 * experts,
                               p + 3 * experts + 1};
      for (int64_t t = chunk_begin[c]; t < chunk_begin[c + 1]; ++t) {
        RouteRow(o, bias, logits + t * experts, &scratch, ids + t * width, weights + t * width,
                 stats_out);
      }
    }
  }
  RouterStats& stats = out->stats;
  stats.rows = tokens;
  stats.prob_sums.assign(static_cast<size_t>(experts), 0.0);
  stats.choice_counts.assign(static_cast<size_t>(experts), 0.0);
  stats.routed_counts.assign(static_cast<size_t>(experts), 0.0);
  SequenceStats& seq = out->seq_stats;
  if (seq_length > 0) {
    seq.sequences = tokens / seq_length;
    seq.rows_per_sequence = seq_length;
    seq.prob_sums.assign(static_cast<size_t>(seq.sequences * experts), 0.0);
    seq.choice_counts.assign(static_cast<size_t>(seq.sequences * experts), 0.0);
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const double* p = partial.data() + c * stride;
    for (int64_t e = 0; e < experts; ++e) {
      stats.prob_sums[e] += p[e];
      stats.choice_counts[e] += p[experts + e];
      stats.routed_counts[e] += p[2 * experts + e];
    }
    stats.z_sum += p[3 * experts];
    stats.entropy_sum += p[3 * experts + 1];
    if (seq_length > 0) {
      const int64_t b = chunk_begin[c] / seq_length;
      for (int64_t e = 0; e < experts; ++e) {
        seq.prob_sums[b * experts + e] += p[e];
        seq.choice_counts[b * experts + e] += p[experts + e];
      }
    }
  }
}

// d loss / d logits for every row, then dx and d gate by two GEMMs.
template <typename T>
void BackwardCpu(const RouterOptions& o, const Tensor& dweights, const RouterLossGrads& losses,
                 const Router::Saved& saved, const Tensor& w, Tensor* dw, Tensor* dx,
                 bool accumulate) {
  const Tensor& x = saved.x_TH;
  const int64_t tokens = x.dim(0), hidden = x.dim(1), experts = o.num_experts;
  const int64_t width = saved.ids_TK.dim(1);
  const T* logits = saved.logits_TE.data<T>();
  const int32_t* ids = saved.ids_TK.data<int32_t>();
  const T* g = dweights.data<T>();
  const double* daux = losses.daux_dprob_E.empty() ? nullptr : losses.daux_dprob_E.data();
  const double* daux_seq = losses.daux_dprob_BE.empty() ? nullptr : losses.daux_dprob_BE.data();
  const int64_t sequences = static_cast<int64_t>(losses.daux_dprob_BE.size()) / experts;
  const int64_t rows_per_sequence = sequences > 0 ? tokens / sequences : 1;
  const bool sigmoid = o.score_function == ScoreFunction::kSigmoid;
  Tensor dlogits_TE = Tensor::Empty({tokens, experts}, x.dtype());
  T* dlogits = dlogits_TE.data<T>();
#pragma omp parallel
  {
    RowScratch r(o);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const T* row = logits + t * experts;
      const double lse = Scores(o, row, &r);
      const double* seq_row =
          daux_seq == nullptr ? nullptr : daux_seq + (t / rows_per_sequence) * experts;
      for (int64_t e = 0; e < experts; ++e) {
        double d = daux == nullptr ? 0.0 : daux[e];
        if (seq_row != nullptr) d += seq_row[e];
        // d(-q log q) / dq = -(log q + 1); the constant 1 cancels below
        // because the q of a row sum to 1.
        if (losses.entropy_scale != 0 && r.q[e] > 0) {
          d -= losses.entropy_scale * (std::log(r.q[e]) + 1.0);
        }
        r.dq[e] = d;
        r.ds[e] = 0;
      }
      // The weights' path. Renormalised: w_j = b_j / S over the chosen j, so
      // d loss / d b_j = (g_j - sum_i g_i w_i) / S; otherwise w_j = b_j.
      const int32_t* row_ids = ids + t * width;
      const T* row_g = g + t * width;
      std::vector<double>& db = sigmoid ? r.ds : r.dq;
      const std::vector<double>& base = sigmoid ? r.s : r.p;
      const bool renormalise = !o.top_p() && (sigmoid ? o.top_k > 1 : !o.pre_softmax);
      if (renormalise) {
        double chosen_sum = 0, g_dot_w = 0;
        for (int64_t j = 0; j < width; ++j) chosen_sum += base[row_ids[j]];
        for (int64_t j = 0; j < width; ++j) {
          g_dot_w += static_cast<double>(row_g[j]) * base[row_ids[j]] / chosen_sum;
        }
        for (int64_t j = 0; j < width; ++j) {
          db[row_ids[j]] += (static_cast<double>(row_g[j]) - g_dot_w) / chosen_sum;
        }
      } else {
        for (int64_t j = 0; j < width; ++j) {
          if (row_ids[j] >= 0) db[row_ids[j]] += static_cast<double>(row_g[j]);
        }
      }
      // Through q (softmax, or s normalised by its sum), then to the logits,
      // plus d(z_scale * lse^2) / d logit_e = 2 z_scale lse p_e.
      double q_dot_dq = 0;
      for (int64_t e = 0; e < experts; ++e) q_dot_dq += r.q[e] * r.dq[e];
      const double z_term = 2.0 * losses.z_scale * lse;
      if (sigmoid) {
        double s_sum = 0;
        for (int64_t e = 0; e < experts; ++e) s_sum += r.s[e];
        for (int64_t e = 0; e < experts; ++e) {
          const double ds = r.ds[e] + (r.dq[e] - q_dot_dq) / s_sum;
          dlogits[t * experts + e] = static_cast<T>(ds * r.s[e] * (1.0 - r.s[e]) + z_term * r.p[e]);
        }
      } else {
        for (int64_t e = 0; e < experts; ++e) {
          dlogits[t * experts + e] = static_cast<T>(r.p[e] * (r.dq[e] - q_dot_dq + z_term));
        }
      }
    }
  }
  // dx [T, H] (+)= dlogits [T, E] gate [E, H]; d gate [E, H] += dlogits^T x.
  cpu::Gemm<T>(false, false, tokens, hidden, experts, T(1), dlogits, experts, w.data<T>(), hidden,
               accumulate ? T(1) : T(0), dx->data<T>(), hidden);
  cpu::Gemm<T>(true, false, experts, hidden, tokens, T(1), dlogits, experts, x.data<T>(), hidden,
               T(1), dw->data<T>(), hidden);
}

RouterLossGrads AuxAndZ(const std::vector<double>& daux_dprob_E, double z_scale) {
  RouterLossGrads losses;
  losses.daux_dprob_E = daux_dprob_E;
  losses.z_scale = z_scale;
  return losses;
}

}  // namespace

Router::Router(std::string name, int64_t hidden_size, const RouterOptions& options, DType dtype,
               Device device)
    : name_(CheckedName(std::move(name), hidden_size, options, dtype, device)),
      hidden_size_(hidden_size),
      options_(options),
      weight_(name_ + ".weight", {options.num_experts, hidden_size}, dtype, device) {
  if (options.enable_expert_bias) {
    expert_bias_ = Tensor::Zeros({options.num_experts}, DType::kF32, device);
  }
}

Router::Router(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k,
               DType dtype, Device device)
    : Router(std::move(name), hidden_size, MixtralOptions(num_experts, top_k), dtype, device) {}

Routing Router::Forward(const Tensor& x_TH, Saved* saved, int64_t seq_length) const {
  const Tensor& w = weight_.value;
  MOE_CHECK(x_TH.device() == Device::kCpu) << weight_.name << ": input " << x_TH.Describe()
                                           << " is on CUDA; the CUDA MoE path is not built yet";
  MOE_CHECK(x_TH.ndim() == 2 && x_TH.dim(1) == hidden_size_)
      << weight_.name << ": input must be [tokens, " << hidden_size_ << "], got "
      << x_TH.Describe();
  MOE_CHECK(x_TH.dtype() == w.dtype())
      << weight_.name << ": input " << x_TH.Describe() << " vs weight " << w.Describe();
  const int64_t tokens = x_TH.dim(0);
  MOE_CHECK(seq_length == 0 || (seq_length > 0 && tokens % seq_length == 0))
      << weight_.name << ": seq_length must divide the " << tokens
      << " tokens into whole sequences (or be 0 for no per-sequence statistics), got "
      << seq_length;
  Routing routing;
  routing.logits_TE = Tensor::Empty({tokens, num_experts()}, x_TH.dtype());
  routing.ids_TK = Tensor::Empty({tokens, width()}, DType::kI32);
  routing.weights_TK = Tensor::Empty({tokens, width()}, x_TH.dtype());
  const float* bias = expert_bias_.defined() ? expert_bias_.data<float>() : nullptr;
  if (x_TH.dtype() == DType::kF64) {
    ForwardCpu<double>(options_, bias, x_TH, w, seq_length, &routing);
  } else {
    ForwardCpu<float>(options_, bias, x_TH, w, seq_length, &routing);
  }
  saved->x_TH = x_TH;
  saved->logits_TE = routing.logits_TE;
  saved->ids_TK = routing.ids_TK;
  return routing;
}

Tensor Router::Backward(const Tensor& dweights_TK, const RouterLossGrads& losses,
                        const Saved& saved) {
  MOE_CHECK(saved.x_TH.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  Tensor dx = Tensor::Empty(saved.x_TH.shape(), saved.x_TH.dtype());
  BackwardInto(dweights_TK, losses, saved, &dx, /*accumulate=*/false);
  return dx;
}

void Router::BackwardAccumulate(const Tensor& dweights_TK, const RouterLossGrads& losses,
                                const Saved& saved, Tensor* dx_TH) {
  MOE_CHECK(saved.x_TH.defined()) << weight_.name << ": Backward needs the Saved of a Forward call";
  MOE_CHECK(dx_TH->shape() == saved.x_TH.shape() && dx_TH->dtype() == saved.x_TH.dtype() &&
            dx_TH->device() == Device::kCpu)
      << weight_.name << ": dx must be like the input " << saved.x_TH.Describe() << ", got "
      << dx_TH->Describe();
  BackwardInto(dweights_TK, losses, saved, dx_TH, /*accumulate=*/true);
}

Tensor Router::Backward(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                        double z_scale, const Saved& saved) {
  return Backward(dweights_TK, AuxAndZ(daux_dprob_E, z_scale), saved);
}

void Router::BackwardAccumulate(const Tensor& dweights_TK, const std::vector<double>& daux_dprob_E,
                                double z_scale, const Saved& saved, Tensor* dx_TH) {
  BackwardAccumulate(dweights_TK, AuxAndZ(daux_dprob_E, z_scale), saved, dx_TH);
}

void Router::BackwardInto(const Tensor& dweights_TK, const RouterLossGrads& losses,
                          const Saved& saved, Tensor* dx_TH, bool accumulate) {
  const int64_t experts = num_experts(), tokens = saved.x_TH.dim(0);
  MOE_CHECK(dweights_TK.shape() == saved.ids_TK.shape() &&
            dweights_TK.dtype() == saved.x_TH.dtype() && dweights_TK.device() == Device::kCpu)
      << weight_.name << ": dweights must be " << DTypeName(saved.x_TH.dtype())
      << ShapeToString(saved.ids_TK.shape()) << " on cpu, got " << dweights_TK.Describe();
  MOE_CHECK(losses.daux_dprob_E.empty() ||
            static_cast<int64_t>(losses.daux_dprob_E.size()) == experts)
      << weight_.name << ": daux_dprob must have num_experts = " << experts
      << " entries (or none), got " << losses.daux_dprob_E.size();
  const int64_t seq_entries = static_cast<int64_t>(losses.daux_dprob_BE.size());
  MOE_CHECK(seq_entries == 0 ||
            (seq_entries % experts == 0 && tokens % (seq_entries / experts) == 0))
      << weight_.name << ": the sequence aux gradient must be [sequences, " << experts
      << "] with the sequences dividing the " << tokens << " tokens, got " << seq_entries
      << " entries";
  if (saved.x_TH.dtype() == DType::kF64) {
    BackwardCpu<double>(options_, dweights_TK, losses, saved, weight_.value, &weight_.grad, dx_TH,
                        accumulate);
  } else {
    BackwardCpu<float>(options_, dweights_TK, losses, saved, weight_.value, &weight_.grad, dx_TH,
                       accumulate);
  }
}

void Router::UpdateExpertBias(const std::vector<double>& tokens_per_expert_E, double rate) {
  MOE_CHECK(expert_bias_.defined())
      << name_ << ": UpdateExpertBias needs --moe_router_enable_expert_bias";
  MOE_CHECK(static_cast<int64_t>(tokens_per_expert_E.size()) == num_experts())
      << name_ << ": UpdateExpertBias needs num_experts = " << num_experts()
      << " token counts, got " << tokens_per_expert_E.size();
  double mean = 0;
  for (double c : tokens_per_expert_E) mean += c;
  mean /= static_cast<double>(num_experts());
  float* bias = expert_bias_.data<float>();
  for (int64_t e = 0; e < num_experts(); ++e) {
    const double offset = mean - tokens_per_expert_E[e];
    const double sign = offset > 0 ? 1.0 : offset < 0 ? -1.0 : 0.0;
    bias[e] = static_cast<float>(static_cast<double>(bias[e]) + rate * sign);
  }
}

}  // namespace moe
