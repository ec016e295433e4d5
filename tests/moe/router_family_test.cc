// The router family (moe/router.h): every variant's backward against finite
// differences, each variant's choices and weights against hand-computed
// tables, the balancing losses' formulas, the expert bias, and every
// ValidateRouterOptions rule.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "moe/router.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Central differences in double with h = 1e-5, as for the core layers. Each
// loss is smooth while no choice changes; the objectives below check that.
constexpr double kGradTolerance = 1e-7;

double Sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

// A router whose gate is the identity (H = E), so x rows are the logits.
Router IdentityRouter(const RouterOptions& options) {
  Router router("gate", options.num_experts, options, DType::kF64);
  const int64_t e = options.num_experts;
  Tensor w = Tensor::Zeros({e, e}, DType::kF64);
  for (int64_t i = 0; i < e; ++i) w.SetFromDouble(i * e + i, 1.0);
  router.weight().value.CopyFrom(w);
  return router;
}

Routing RouteLogits(const Router& router, const std::vector<std::vector<double>>& logits) {
  const int64_t e = router.num_experts();
  Tensor x = Tensor::Zeros({static_cast<int64_t>(logits.size()), e}, DType::kF64);
  for (size_t t = 0; t < logits.size(); ++t) {
    for (int64_t i = 0; i < e; ++i) x.SetFromDouble(static_cast<int64_t>(t) * e + i, logits[t][i]);
  }
  Router::Saved saved;
  return router.Forward(x, &saved);
}

std::vector<int32_t> Ids(const Routing& r, int64_t t) {
  const int64_t k = r.ids_TK.dim(1);
  return std::vector<int32_t>(r.ids_TK.data<int32_t>() + t * k,
                              r.ids_TK.data<int32_t>() + (t + 1) * k);
}

// ---------------------------------------------------------------------------
// Finite differences for every variant and every loss term.

struct Variant {
  const char* name;
  RouterOptions options;
};
// Keeps CTest's test names readable (the default prints the bytes).
void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

RouterOptions Options(int64_t top_k, ScoreFunction f = ScoreFunction::kSoftmax) {
  RouterOptions o;
  o.num_experts = 8;
  o.top_k = top_k;
  o.score_function = f;
  return o;
}

std::vector<Variant> Variants() {
  std::vector<Variant> v;
  v.push_back({"MixtralTop2", Options(2)});
  v.push_back({"MixtralTop1", Options(1)});
  RouterOptions pre = Options(2);
  pre.pre_softmax = true;
  v.push_back({"PreSoftmaxTop2", pre});
  pre.top_k = 1;
  v.push_back({"PreSoftmaxTop1", pre});
  v.push_back({"SigmoidTop3", Options(3, ScoreFunction::kSigmoid)});
  v.push_back({"SigmoidTop1", Options(1, ScoreFunction::kSigmoid)});
  RouterOptions grouped = Options(4);
  grouped.num_groups = 4;
  grouped.group_topk = 2;
  v.push_back({"GroupLimitedSoftmax", grouped});
  RouterOptions biased = Options(2, ScoreFunction::kSigmoid);
  biased.enable_expert_bias = true;
  v.push_back({"SigmoidExpertBias", biased});
  biased.num_groups = 4;
  biased.group_topk = 2;
  v.push_back({"GroupLimitedSigmoidExpertBias", biased});
  RouterOptions topp = Options(2);
  topp.topp = 0.5;
  v.push_back({"TopP", topp});
  topp.topp = 0.7;
  topp.topp_max_experts = 3;
  v.push_back({"TopPCapped", topp});
  return v;
}

// GradientError, except where the loss is constant (Mixtral with K = 1: its
// one weight is always 1): then the analytic gradient must be ~0 absolutely.
double Error(const Tensor& analytic, const Tensor& numerical, const std::vector<int64_t>& checked) {
  double numerical_max = 0, analytic_max = 0;
  for (int64_t i : checked) {
    numerical_max = std::max(numerical_max, std::abs(numerical.GetAsDouble(i)));
    analytic_max = std::max(analytic_max, std::abs(analytic.GetAsDouble(i)));
  }
  if (numerical_max == 0) return analytic_max * 1e4;
  return GradientError(analytic, numerical, checked);
}

enum class Term { kWeights, kHfAux, kSwitchAux, kSeqAux, kGlobalAux, kZ, kEntropy, kAll };
void PrintTo(Term t, std::ostream* os) { *os << static_cast<int>(t); }
constexpr Term kTerms[] = {Term::kWeights,   Term::kHfAux, Term::kSwitchAux, Term::kSeqAux,
                           Term::kGlobalAux, Term::kZ,     Term::kEntropy,   Term::kAll};

const char* TermName(Term t) {
  switch (t) {
    case Term::kWeights:
      return "Weights";
    case Term::kHfAux:
      return "HfAux";
    case Term::kSwitchAux:
      return "SwitchAux";
    case Term::kSeqAux:
      return "SeqAux";
    case Term::kGlobalAux:
      return "GlobalAux";
    case Term::kZ:
      return "Z";
    case Term::kEntropy:
      return "Entropy";
    case Term::kAll:
      return "All";
  }
  return "";
}

class RouterFamilyGradientTest : public ::testing::TestWithParam<std::tuple<Variant, Term>> {};

TEST_P(RouterFamilyGradientTest, BackwardMatchesFiniteDifferences) {
  const auto& [variant, term] = GetParam();
  const RouterOptions& o = variant.options;
  const int64_t tokens = 12, seq_length = 4, hidden = 6, experts = o.num_experts;
  const double coefficient = 0.3, loss_scale = 2.0;
  Router router("layers.0.gate", hidden, o, DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 101, 0.5));
  if (o.enable_expert_bias) {
    router.expert_bias().CopyFrom(RandomTensor({experts}, DType::kF32, 102, 0.1));
  }
  Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 103);
  const Tensor g = RandomTensor({tokens, router.width()}, DType::kF64, 104);
  // Another rank's share of the global batch: counts and rows.
  std::vector<double> other_counts(experts);
  for (int64_t e = 0; e < experts; ++e) other_counts[e] = static_cast<double>(e + 1);
  const double other_rows = 36.0 / static_cast<double>(o.top_k);

  auto global_counts = [&](const RouterStats& s) {
    std::vector<double> c = s.choice_counts;
    for (int64_t e = 0; e < experts; ++e) c[e] += other_counts[e];
    return c;
  };
  auto has = [&](Term t) { return term == t || term == Term::kAll; };
  auto objective = [&](const Routing& r) {
    double v = 0;
    if (has(Term::kWeights)) v += Dot(r.weights_TK, g);
    const double c = coefficient * loss_scale;
    if (has(Term::kHfAux)) v += c * ComputeLoadBalancingLoss(r.stats, 1, 1).aux;
    if (has(Term::kSwitchAux)) v += c * ComputeSwitchLoadBalancingLoss(r.stats, 1, 1).aux;
    if (has(Term::kSeqAux)) v += c * ComputeSequenceLoadBalancingLoss(r.seq_stats, 1, 1).aux;
    if (has(Term::kGlobalAux)) {
      v += c * ComputeGlobalLoadBalancingLoss(r.stats, global_counts(r.stats),
                                              static_cast<double>(tokens) + other_rows, 1, 1)
                   .aux;
    }
    if (has(Term::kZ)) v += c * ComputeZLoss(r.stats, 1, 1).z;
    if (has(Term::kEntropy)) v += c * ComputeEntropyLoss(r.stats, 1, 1).entropy;
    return v;
  };

  Router::Saved saved;
  const Routing ref = router.Forward(x, &saved, seq_length);
  // A perturbation that changes a choice would make the loss jump; record it.
  bool choice_changed = false;
  auto loss = [&] {
    Router::Saved s;
    const Routing r = router.Forward(x, &s, seq_length);
    for (int64_t i = 0; i < ref.ids_TK.numel(); ++i) {
      if (r.ids_TK.data<int32_t>()[i] != ref.ids_TK.data<int32_t>()[i]) choice_changed = true;
    }
    if (r.stats.choice_counts != ref.stats.choice_counts) choice_changed = true;
    return objective(r);
  };

  RouterLossGrads grads;
  if (has(Term::kHfAux)) {
    grads.AddAux(ComputeLoadBalancingLoss(ref.stats, coefficient, loss_scale).daux_dprob);
  }
  if (has(Term::kSwitchAux)) {
    grads.AddAux(ComputeSwitchLoadBalancingLoss(ref.stats, coefficient, loss_scale).daux_dprob);
  }
  if (has(Term::kGlobalAux)) {
    grads.AddAux(ComputeGlobalLoadBalancingLoss(ref.stats, global_counts(ref.stats),
                                                static_cast<double>(tokens) + other_rows,
                                                coefficient, loss_scale)
                     .daux_dprob);
  }
  if (has(Term::kSeqAux)) {
    grads.daux_dprob_BE =
        ComputeSequenceLoadBalancingLoss(ref.seq_stats, coefficient, loss_scale).daux_dprob;
  }
  if (has(Term::kZ)) grads.z_scale = ComputeZLoss(ref.stats, coefficient, loss_scale).z_scale;
  if (has(Term::kEntropy)) {
    grads.entropy_scale = ComputeEntropyLoss(ref.stats, coefficient, loss_scale).entropy_scale;
  }
  const Tensor dweights = has(Term::kWeights) ? g : Tensor::Zeros(g.shape(), DType::kF64);
  const Tensor dx = router.Backward(dweights, grads, saved);
  const Tensor dgate = router.weight().grad.Clone();

  std::vector<int64_t> checked;
  const Tensor numeric_dx = NumericalGradient(x, loss, 1e-5, 0, &checked);
  EXPECT_LT(Error(dx, numeric_dx, checked), kGradTolerance);
  const Tensor numeric_dgate = NumericalGradient(router.weight().value, loss, 1e-5, 0, &checked);
  EXPECT_LT(Error(dgate, numeric_dgate, checked), kGradTolerance);
  ASSERT_FALSE(choice_changed) << "a choice flipped under h = 1e-5: pick another seed";
}

INSTANTIATE_TEST_SUITE_P(AllVariantsAllTerms, RouterFamilyGradientTest,
                         ::testing::Combine(::testing::ValuesIn(Variants()),
                                            ::testing::ValuesIn(kTerms)),
                         [](const ::testing::TestParamInfo<std::tuple<Variant, Term>>& param) {
                           return std::string(std::get<0>(param.param).name) + "_" +
                                  TermName(std::get<1>(param.param));
                         });

// ---------------------------------------------------------------------------
// Choices and weights by hand.

TEST(RouterFamilyTest, TopPMatchesHandTable) {
  RouterOptions o = Options(2);
  o.num_experts = 4;
  o.topp = 0.8;
  const std::vector<std::vector<double>> probs = {
      {0.85, 0.05, 0.06, 0.04},  // 0.85 reaches 0.8 alone: one expert
      {0.30, 0.27, 0.22, 0.21},  // 0.30, 0.57, 0.79, 1.00: all four
      {0.10, 0.50, 0.15, 0.25},  // 0.50, 0.75, 0.90: three
      {0.40, 0.10, 0.45, 0.05},  // 0.45, 0.85: two
  };
  std::vector<std::vector<double>> logits = probs;
  for (auto& row : logits) {
    for (double& v : row) v = std::log(v);
  }
  struct Expected {
    std::vector<int32_t> ids;
    std::vector<double> weights;
  };
  const std::vector<Expected> uncapped = {{{0, -1, -1, -1}, {0.85, 0, 0, 0}},
                                          {{0, 1, 2, 3}, {0.30, 0.27, 0.22, 0.21}},
                                          {{1, 3, 2, -1}, {0.50, 0.25, 0.15, 0}},
                                          {{2, 0, -1, -1}, {0.45, 0.40, 0, 0}}};
  const std::vector<Expected> capped = {
      {{0, -1}, {0.85, 0}}, {{0, 1}, {0.30, 0.27}}, {{1, 3}, {0.50, 0.25}}, {{2, 0}, {0.45, 0.40}}};
  for (int64_t cap : {0, 2}) {
    o.topp_max_experts = cap;
    const Router router = IdentityRouter(o);
    EXPECT_EQ(router.width(), cap == 0 ? 4 : 2);
    const Routing r = RouteLogits(router, logits);
    const std::vector<Expected>& want = cap == 0 ? uncapped : capped;
    for (int64_t t = 0; t < 4; ++t) {
      EXPECT_EQ(Ids(r, t), want[t].ids) << "token " << t << " cap " << cap;
      for (int64_t j = 0; j < router.width(); ++j) {
        EXPECT_NEAR(r.weights_TK.GetAsDouble(t * router.width() + j), want[t].weights[j], 1e-12)
            << "token " << t << " slot " << j << " cap " << cap;
      }
    }
    // Both counts are the top-p sets; prob sums are column sums of probs.
    const std::vector<double> counts =
        cap == 0 ? std::vector<double>{3, 2, 3, 2} : std::vector<double>{3, 2, 1, 1};
    EXPECT_EQ(r.stats.choice_counts, counts);
    EXPECT_EQ(r.stats.routed_counts, counts);
    EXPECT_NEAR(r.stats.prob_sums[2], 0.06 + 0.22 + 0.15 + 0.45, 1e-12);
  }
}

TEST(RouterFamilyTest, GroupLimitedMatchesHandExample) {
  // E = 8 in 4 groups of 2; K = 4, 2 groups, each scored by its top 4/2 = 2
  // logits: sums 5, 7.9, 3.5, 2 keep groups 1 and 0, although group 2 holds
  // the second-largest logit (4.5), which plain top-4 would take.
  RouterOptions o = Options(4);
  o.num_groups = 4;
  o.group_topk = 2;
  const Router router = IdentityRouter(o);
  const std::vector<double> logits = {5, 0, 4, 3.9, 4.5, -1, 1, 1};
  const Routing r = RouteLogits(router, {logits});
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{0, 2, 3, 1}));
  const double z = std::exp(5) + std::exp(4) + std::exp(3.9) + std::exp(0);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), std::exp(5) / z, 1e-14);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(2), std::exp(3.9) / z, 1e-14);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(3), 1 / z, 1e-14);
  // The balance losses count the plain top-4 {0, 4, 2, 3}; the load is the routing.
  EXPECT_EQ(r.stats.choice_counts, (std::vector<double>{1, 0, 1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(r.stats.routed_counts, (std::vector<double>{1, 1, 1, 1, 0, 0, 0, 0}));
}

TEST(RouterFamilyTest, PreSoftmaxAndSigmoidMatchHandComputation) {
  const std::vector<double> logits = {1, 3, 2, 0};
  const double z = std::exp(1) + std::exp(3) + std::exp(2) + 1;
  RouterOptions o = Options(2);
  o.num_experts = 4;
  o.pre_softmax = true;
  Routing r = RouteLogits(IdentityRouter(o), {logits});
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), std::exp(3) / z, 1e-15);  // not renormalised
  EXPECT_NEAR(r.weights_TK.GetAsDouble(1), std::exp(2) / z, 1e-15);

  o.pre_softmax = false;
  o.score_function = ScoreFunction::kSigmoid;
  r = RouteLogits(IdentityRouter(o), {logits});
  const double s1 = Sigmoid(3), s2 = Sigmoid(2);
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{1, 2}));
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), s1 / (s1 + s2), 1e-15);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(1), s2 / (s1 + s2), 1e-15);
  // The balance scores: sigmoid normalised over all experts.
  const double s_sum = Sigmoid(1) + s1 + s2 + Sigmoid(0);
  EXPECT_NEAR(r.stats.prob_sums[3], 0.5 / s_sum, 1e-15);
  // The z-loss stays on the logits' logsumexp.
  EXPECT_NEAR(r.stats.z_sum, std::log(z) * std::log(z), 1e-13);

  o.top_k = 1;  // one expert: the raw sigmoid score, as Megatron
  r = RouteLogits(IdentityRouter(o), {logits});
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{1}));
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), s1, 1e-15);
}

TEST(RouterFamilyTest, EntropyIsOfTheBalanceScores) {
  RouterOptions o = Options(1);
  o.num_experts = 4;
  o.topp = 0.5;
  const std::vector<double> p = {0.1, 0.2, 0.3, 0.4};
  const Routing r =
      RouteLogits(IdentityRouter(o),
                  {{std::log(0.1), std::log(0.2), std::log(0.3), std::log(0.4)}, {0, 0, 0, 0}});
  double h = 0;
  for (double v : p) h -= v * std::log(v);
  EXPECT_NEAR(r.stats.entropy_sum, h + std::log(4.0), 1e-14);
  const EntropyLoss loss = ComputeEntropyLoss(r.stats, 0.01, 4.0);
  EXPECT_NEAR(loss.entropy, (h + std::log(4.0)) / 2, 1e-14);
  EXPECT_NEAR(loss.loss, 0.01 * loss.entropy, 1e-16);
  EXPECT_NEAR(loss.entropy_scale, 0.01 * 4.0 / 2, 1e-16);
}

// ---------------------------------------------------------------------------
// Expert bias.

TEST(RouterFamilyTest, ExpertBiasChangesSelectionNotWeights) {
  RouterOptions o = Options(2, ScoreFunction::kSigmoid);
  o.num_experts = 4;
  o.enable_expert_bias = true;
  Router router = IdentityRouter(o);
  EXPECT_EQ(router.expert_bias_name(), "gate.expert_bias");
  ASSERT_EQ(router.expert_bias().dtype(), DType::kF32);
  const std::vector<double> logits = {1, 3, 2, 0};
  Routing r = RouteLogits(router, {logits});
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{1, 2}));  // zero bias: plain sigmoid top-2
  router.expert_bias().CopyFrom(Tensor::FromVector({4}, {0, 0, 0, 2}));
  r = RouteLogits(router, {logits});
  // Keys s + b: 0.73, 0.95, 0.88, 2.5: expert 3 now leads; expert 1 stays.
  EXPECT_EQ(Ids(r, 0), (std::vector<int32_t>{3, 1}));
  const double s3 = Sigmoid(0), s1 = Sigmoid(3);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(0), s3 / (s3 + s1), 1e-15);
  EXPECT_NEAR(r.weights_TK.GetAsDouble(1), s1 / (s3 + s1), 1e-15);
  EXPECT_EQ(r.stats.routed_counts, (std::vector<double>{0, 1, 0, 1}));
  EXPECT_EQ(r.stats.choice_counts, (std::vector<double>{0, 1, 1, 0}));  // unbiased
}

TEST(RouterFamilyTest, UpdateExpertBiasRaisesTheUnderloaded) {
  RouterOptions o = Options(2, ScoreFunction::kSigmoid);
  o.num_experts = 4;
  o.enable_expert_bias = true;
  Router router("gate", 4, o);
  router.UpdateExpertBias({10, 2, 4, 4}, 0.25);  // mean 5
  EXPECT_EQ(router.expert_bias().ToFloatVector(), (std::vector<float>{-0.25, 0.25, 0.25, 0.25}));
  router.UpdateExpertBias({5, 5, 5, 5}, 0.25);  // balanced: sign(0) = 0
  EXPECT_EQ(router.expert_bias().ToFloatVector(), (std::vector<float>{-0.25, 0.25, 0.25, 0.25}));
  router.UpdateExpertBias({1, 9, 5, 5}, 0.125);
  EXPECT_EQ(router.expert_bias().ToFloatVector(), (std::vector<float>{-0.125, 0.125, 0.25, 0.25}));
}

TEST(RouterFamilyTest, BiasUpdatesBalanceASkewedRouterWithoutAuxLoss) {
  const int64_t tokens = 512, hidden = 16, experts = 8;
  RouterOptions o = Options(2, ScoreFunction::kSigmoid);
  o.enable_expert_bias = true;
  Router router("gate", hidden, o);
  // Every token carries a constant feature that experts 0 and 1 love.
  Tensor w = RandomTensor({experts, hidden}, DType::kF32, 201, 0.3);
  w.SetFromDouble(0 * hidden, 3.0);
  w.SetFromDouble(1 * hidden, 2.5);
  router.weight().value.CopyFrom(w);
  Tensor x = RandomTensor({tokens, hidden}, DType::kF32, 202);
  for (int64_t t = 0; t < tokens; ++t) x.SetFromDouble(t * hidden, 1.0);
  auto balance = [&] {
    Router::Saved saved;
    const Routing r = router.Forward(x, &saved);
    const std::vector<double>& load = r.stats.routed_counts;
    const double mean = static_cast<double>(tokens * o.top_k) / static_cast<double>(experts);
    router.UpdateExpertBias(load, 0.01);
    return *std::max_element(load.begin(), load.end()) / mean;
  };
  const double first = balance();
  EXPECT_GT(first, 3.0);
  double last = first;
  for (int step = 0; step < 300; ++step) last = balance();
  EXPECT_LT(last, 1.5) << "max/mean load went from " << first << " to " << last;
}

// ---------------------------------------------------------------------------
// Balancing losses.

TEST(RouterFamilyTest, SwitchAuxIsHfAuxOverTopKAndGlobalSharesAddUp) {
  const int64_t hidden = 6, experts = 8, top_k = 2;
  Router router("gate", hidden, Options(top_k), DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 301, 0.5));
  const Tensor xa = RandomTensor({10, hidden}, DType::kF64, 302);
  const Tensor xb = RandomTensor({6, hidden}, DType::kF64, 303);
  Router::Saved s;
  const RouterStats a = router.Forward(xa, &s).stats;
  const RouterStats b = router.Forward(xb, &s).stats;
  const LoadBalancingLoss hf = ComputeLoadBalancingLoss(a, 0.1, 1);
  const LoadBalancingLoss sw = ComputeSwitchLoadBalancingLoss(a, 0.1, 1);
  EXPECT_NEAR(sw.aux, hf.aux / top_k, 1e-15);
  EXPECT_NEAR(sw.daux_dprob[3], hf.daux_dprob[3] / top_k, 1e-15);
  // Two ranks: global counts, local probabilities; the shares sum to the
  // aux of the concatenated batch.
  RouterStats both = a;
  both.Add(b);
  const LoadBalancingLoss share_a =
      ComputeGlobalLoadBalancingLoss(a, both.choice_counts, 16, 0.1, 1);
  const LoadBalancingLoss share_b =
      ComputeGlobalLoadBalancingLoss(b, both.choice_counts, 16, 0.1, 1);
  const LoadBalancingLoss whole = ComputeSwitchLoadBalancingLoss(both, 0.1, 1);
  EXPECT_NEAR(share_a.aux + share_b.aux, whole.aux, 1e-14);
  EXPECT_NEAR(share_a.loss + share_b.loss, whole.loss, 1e-15);
  for (int64_t e = 0; e < experts; ++e) {
    EXPECT_NEAR(share_a.daux_dprob[e], whole.daux_dprob[e], 1e-15);
  }
  // Balanced routing: Megatron's aux is 1 where Hugging Face's is K.
  RouterStats balanced;
  balanced.rows = 8;
  balanced.choice_counts.assign(experts, 2.0);
  balanced.prob_sums.assign(experts, 1.0);
  EXPECT_NEAR(ComputeSwitchLoadBalancingLoss(balanced, 1, 1).aux, 1.0, 1e-15);
  EXPECT_NEAR(ComputeLoadBalancingLoss(balanced, 1, 1).aux, 2.0, 1e-15);
}

TEST(RouterFamilyTest, SequenceStatsAreEachSequencesStats) {
  const int64_t hidden = 6, experts = 8, seq_length = 5, sequences = 3;
  Router router("gate", hidden, Options(2), DType::kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, DType::kF64, 401, 0.5));
  const Tensor x = RandomTensor({sequences * seq_length, hidden}, DType::kF64, 402);
  Router::Saved s;
  const Routing all = router.Forward(x, &s, seq_length);
  ASSERT_EQ(all.seq_stats.sequences, sequences);
  ASSERT_EQ(all.seq_stats.rows_per_sequence, seq_length);
  double aux_sum = 0;
  for (int64_t b = 0; b < sequences; ++b) {
    const RouterStats one = router.Forward(x.Slice(b * seq_length, (b + 1) * seq_length), &s).stats;
    for (int64_t e = 0; e < experts; ++e) {
      EXPECT_EQ(all.seq_stats.choice_counts[b * experts + e], one.choice_counts[e]);
      EXPECT_NEAR(all.seq_stats.prob_sums[b * experts + e], one.prob_sums[e], 1e-14);
    }
    aux_sum += ComputeSwitchLoadBalancingLoss(one, 1, 1).aux;
  }
  // seq_aux_loss = the mean of the per-sequence Megatron aux losses.
  EXPECT_NEAR(ComputeSequenceLoadBalancingLoss(all.seq_stats, 1, 1).aux, aux_sum / sequences,
              1e-14);
  // Context parallelism: two shards of the same sequences pool to the whole.
  SequenceStats halves;
  for (const auto& [begin, end] : {std::pair{0, 2}, std::pair{2, 5}}) {
    Tensor part = Tensor::Empty({sequences * (end - begin), hidden}, DType::kF64);
    for (int64_t b = 0; b < sequences; ++b) {
      part.Slice(b * (end - begin), (b + 1) * (end - begin))
          .CopyFrom(x.Slice(b * seq_length + begin, b * seq_length + end));
    }
    halves.Add(router.Forward(part, &s, end - begin).seq_stats);
  }
  EXPECT_EQ(halves.rows_per_sequence, seq_length);
  EXPECT_EQ(halves.choice_counts, all.seq_stats.choice_counts);
  EXPECT_NEAR(ComputeSequenceLoadBalancingLoss(halves, 1, 1).aux,
              ComputeSequenceLoadBalancingLoss(all.seq_stats, 1, 1).aux, 1e-14);
}

TEST(RouterFamilyTest, Float32MatchesFloat64ForEveryVariant) {
  const int64_t tokens = 33, hidden = 16;
  for (const Variant& v : Variants()) {
    const int64_t experts = v.options.num_experts;
    Router r32("gate", hidden, v.options, DType::kF32);
    Router r64("gate", hidden, v.options, DType::kF64);
    const Tensor w = RandomTensor({experts, hidden}, DType::kF64, 501, 0.3);
    r64.weight().value.CopyFrom(w);
    r32.weight().value.CopyFrom(w.Cast(DType::kF32));
    if (v.options.enable_expert_bias) {
      const Tensor bias = RandomTensor({experts}, DType::kF32, 502, 0.05);
      r32.expert_bias().CopyFrom(bias);
      r64.expert_bias().CopyFrom(bias);
    }
    const Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 503);
    Router::Saved s32, s64;
    const Routing a = r32.Forward(x.Cast(DType::kF32), &s32);
    const Routing b = r64.Forward(x, &s64);
    int64_t differing = 0;
    for (int64_t i = 0; i < a.ids_TK.numel(); ++i) {
      differing += a.ids_TK.data<int32_t>()[i] != b.ids_TK.data<int32_t>()[i];
    }
    ASSERT_EQ(differing, 0) << v.name << ": a near tie; pick another seed";
    EXPECT_LT(testing::MaxRelativeError(a.weights_TK, b.weights_TK), 1e-6) << v.name;
    EXPECT_NEAR(a.stats.entropy_sum, b.stats.entropy_sum, 1e-5 * b.stats.entropy_sum) << v.name;
  }
}

// ---------------------------------------------------------------------------
// Bad options: every rule names its flag.

void ExpectRejected(const RouterOptions& o, const std::string& expected) {
  const absl::Status status = ValidateRouterOptions(o);
  ASSERT_FALSE(status.ok()) << "expected: " << expected;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(status.message()).find(expected), std::string::npos)
      << "message \"" << status.message() << "\" lacks \"" << expected << "\"";
}

TEST(RouterOptionsTest, EveryRuleNamesItsFlag) {
  for (const Variant& v : Variants()) EXPECT_TRUE(ValidateRouterOptions(v.options).ok()) << v.name;
  RouterOptions o = Options(2);
  o.num_experts = 0;
  ExpectRejected(o, "num_experts must be >= 1, got 0 (--num_experts)");
  o = Options(9);
  ExpectRejected(o, "top_k must be in [1, num_experts = 8], got 9 (--moe_router_topk)");
  o = Options(2);
  o.enable_expert_bias = true;
  ExpectRejected(o, "--moe_router_enable_expert_bias needs --moe_router_score_function=sigmoid");
  o = Options(2, ScoreFunction::kSigmoid);
  o.pre_softmax = true;
  ExpectRejected(o,
                 "--moe_router_pre_softmax has no effect with "
                 "--moe_router_score_function=sigmoid");
  for (double topp : {-0.1, 1.5, std::nan("")}) {
    o = Options(2);
    o.topp = topp;
    ExpectRejected(o, "--moe_router_topp must be in (0, 1], or 0 for top-k routing");
  }
  o = Options(2);
  o.topp = 0.5;
  o.topp_max_experts = 9;
  ExpectRejected(o, "--moe_router_topp_max_experts must be in [0, num_experts = 8]");
  o.topp = 0;
  o.topp_max_experts = 3;
  ExpectRejected(o, "--moe_router_topp_max_experts=3 caps top-p routing, which is off");
  o = Options(2, ScoreFunction::kSigmoid);
  o.topp = 0.5;
  ExpectRejected(o, "--moe_router_topp needs --moe_router_score_function=softmax");
  o = Options(2);
  o.num_groups = -1;
  ExpectRejected(o, "--moe_router_num_groups and --moe_router_group_topk must be >= 0");
  o = Options(2);
  o.num_groups = 4;
  ExpectRejected(o,
                 "group-limited routing needs both --moe_router_num_groups and "
                 "--moe_router_group_topk");
  o.num_groups = 0;
  o.group_topk = 1;
  ExpectRejected(o, "got num_groups = 0, group_topk = 1");
  o = Options(2);
  o.topp = 0.5;
  o.num_groups = 4;
  o.group_topk = 1;
  ExpectRejected(o, "--moe_router_topp does not combine with group-limited routing");
  o = Options(2);
  o.num_groups = 3;
  o.group_topk = 1;
  ExpectRejected(o,
                 "num_experts = 8 must be divisible by --moe_router_num_groups = 3 (experts "
                 "form equal contiguous groups); e.g. --moe_router_num_groups=2");
  o.num_groups = 4;
  o.group_topk = 5;
  ExpectRejected(o, "--moe_router_group_topk = 5 must be <= --moe_router_num_groups = 4");
  o.group_topk = 3;
  ExpectRejected(o, "--moe_router_group_topk = 3 must be <= --moe_router_topk = 2");
  o = Options(6);
  o.num_groups = 4;
  o.group_topk = 2;
  ExpectRejected(o, "--moe_router_topk = 6 exceeds the 4 experts in the 2 chosen groups of 2");
  EXPECT_FALSE(ParseScoreFunction("relu").ok());
  EXPECT_EQ(*ParseScoreFunction("sigmoid"), ScoreFunction::kSigmoid);
  EXPECT_EQ(ScoreFunctionName(ScoreFunction::kSoftmax), "softmax");
}

TEST(RouterFamilyDeathTest, MisuseIsNamed) {
  RouterOptions o = Options(2);
  o.num_groups = 3;
  o.group_topk = 1;
  EXPECT_DEATH(Router("layers.1.gate", 4, o), "layers.1.gate: num_experts = 8 must be divisible");
  Router plain("layers.2.gate", 4, Options(2));
  plain.weight().value.SetZero();
  EXPECT_DEATH(plain.UpdateExpertBias(std::vector<double>(8, 1.0), 0.1),
               "layers.2.gate: UpdateExpertBias needs --moe_router_enable_expert_bias");
  Router::Saved saved;
  EXPECT_DEATH(plain.Forward(Tensor::Zeros({6, 4}, DType::kF32), &saved, 4),
               "layers.2.gate.weight: seq_length must divide the 6 tokens");
  plain.Forward(Tensor::Zeros({6, 4}, DType::kF32), &saved, 3);
  RouterLossGrads grads;
  grads.daux_dprob_BE.assign(4 * 8, 0.0);
  EXPECT_DEATH(plain.Backward(Tensor::Zeros({6, 2}, DType::kF32), grads, saved),
               "the sequence aux gradient must be \\[sequences, 8\\]");
}

}  // namespace
}  // namespace moe
