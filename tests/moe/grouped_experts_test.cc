#include "moe/grouped_experts.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// The experts are smooth everywhere (fixed routing): the core layers' bound.
constexpr double kGradTolerance = 1e-7;

void FillExperts(GroupedExperts* experts, uint64_t seed) {
  for (Parameter* p : experts->Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), p->value.dtype(), seed++, 0.4));
  }
}

Tensor Ids(int64_t tokens, int64_t top_k, const std::vector<int32_t>& values) {
  Tensor t = Tensor::Empty({tokens, top_k}, DType::kI32);
  for (size_t i = 0; i < values.size(); ++i) t.data<int32_t>()[i] = values[i];
  return t;
}

// One expert applied to one row, in double, straight from the definition.
std::vector<double> ExpertReference(GroupedExperts& experts, int64_t e, const double* x) {
  const int64_t hidden = experts.hidden_size(), inter = experts.intermediate_size();
  std::vector<double> act(inter), out(hidden, 0.0);
  for (int64_t i = 0; i < inter; ++i) {
    double gate = 0, up = 0;
    for (int64_t h = 0; h < hidden; ++h) {
      gate += experts.w1(e).value.GetAsDouble(i * hidden + h) * x[h];
      up += experts.w3(e).value.GetAsDouble(i * hidden + h) * x[h];
    }
    act[i] = gate / (1 + std::exp(-gate)) * up;
  }
  for (int64_t h = 0; h < hidden; ++h) {
    for (int64_t i = 0; i < inter; ++i) {
      out[h] += experts.w2(e).value.GetAsDouble(h * inter + i) * act[i];
    }
  }
  return out;
}

TEST(GroupedExpertsTest, NamesAndViewsFollowHuggingFace) {
  GroupedExperts experts("model.layers.0.block_sparse_moe.experts", 3, 4, 5, DType::kF64);
  const std::vector<Parameter*> params = experts.Parameters();
  ASSERT_EQ(params.size(), 9u);
  EXPECT_EQ(params[0]->name, "model.layers.0.block_sparse_moe.experts.0.w1.weight");
  EXPECT_EQ(params[1]->name, "model.layers.0.block_sparse_moe.experts.0.w2.weight");
  EXPECT_EQ(params[5]->name, "model.layers.0.block_sparse_moe.experts.1.w3.weight");
  EXPECT_EQ(experts.w1(2).value.shape(), (Shape{5, 4}));
  EXPECT_EQ(experts.w2(2).value.shape(), (Shape{4, 5}));
  // Views into the grouped tensors, values and grads alike.
  EXPECT_EQ(experts.w1(2).value.data<double>(), experts.w1_EIH().data<double>() + 2 * 20);
  EXPECT_EQ(experts.w2(1).value.data<double>(), experts.w2_EHI().data<double>() + 20);
  EXPECT_EQ(experts.w3(0).value.data<double>(), experts.w3_EIH().data<double>());
  EXPECT_EQ(experts.w3(1).grad.GetAsDouble(7), 0.0);
}

TEST(GroupedExpertsTest, ForwardRowsMatchesPerRowReference) {
  // Experts 0 and 3 get no rows.
  const std::vector<int64_t> offsets = {0, 0, 3, 4, 4, 6};
  GroupedExperts experts("experts", 5, 6, 7, DType::kF64);
  FillExperts(&experts, 1);
  const Tensor rows = RandomTensor({6, 6}, DType::kF64, 100);
  GroupedExperts::RowsSaved saved;
  const Tensor out = experts.ForwardRows(rows, offsets, &saved);
  for (int64_t e = 0; e < 5; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      const std::vector<double> expected = ExpertReference(experts, e, rows.data<double>() + r * 6);
      for (int64_t h = 0; h < 6; ++h) {
        EXPECT_NEAR(out.GetAsDouble(r * 6 + h), expected[h], 1e-13) << "row " << r;
      }
    }
  }
}

TEST(GroupedExpertsTest, BackwardMatchesFiniteDifferences) {
  // T = 7, K = 2, E = 5; expert 3 receives no token.
  const int64_t tokens = 7, hidden = 6, inter = 10, num_experts = 5;
  GroupedExperts experts("experts", num_experts, hidden, inter, DType::kF64);
  FillExperts(&experts, 10);
  const Tensor ids = Ids(tokens, 2, {0, 1, 2, 0, 4, 1, 1, 2, 0, 4, 2, 1, 4, 0});
  Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 20);
  Tensor weights = RandomTensor({tokens, 2}, DType::kF64, 21);
  const Tensor dy = RandomTensor({tokens, hidden}, DType::kF64, 22);

  auto loss = [&] {
    GroupedExperts::Saved s;
    return Dot(experts.Forward(x, ids, weights, &s), dy);
  };
  GroupedExperts::Saved saved;
  experts.Forward(x, ids, weights, &saved);
  const GroupedExperts::Grads grads = experts.Backward(dy, saved);

  std::vector<int64_t> checked;
  EXPECT_LT(GradientError(grads.dx_TH, NumericalGradient(x, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  EXPECT_LT(GradientError(grads.dweights_TK, NumericalGradient(weights, loss, 1e-5, 0, &checked),
                          checked),
            kGradTolerance);
  for (int64_t e : {0, 1, 2, 4}) {
    for (Parameter* p : {&experts.w1(e), &experts.w2(e), &experts.w3(e)}) {
      const Tensor analytic = p->grad.Clone();
      const Tensor numeric = NumericalGradient(p->value, loss, 1e-5, 0, &checked);
      EXPECT_LT(GradientError(analytic, numeric, checked), kGradTolerance) << p->name;
    }
  }
  // The expert without tokens: its grads stay exactly zero.
  for (Parameter* p : {&experts.w1(3), &experts.w2(3), &experts.w3(3)}) {
    for (int64_t i = 0; i < p->grad.numel(); ++i) ASSERT_EQ(p->grad.GetAsDouble(i), 0.0);
  }
}

TEST(GroupedExpertsTest, ExpertGradientsAccumulate) {
  GroupedExperts experts("experts", 3, 4, 6, DType::kF64);
  FillExperts(&experts, 30);
  const Tensor ids = Ids(4, 2, {0, 2, 1, 0, 2, 1, 0, 1});
  const Tensor x = RandomTensor({4, 4}, DType::kF64, 31);
  const Tensor w = RandomTensor({4, 2}, DType::kF64, 32);
  const Tensor dy = RandomTensor({4, 4}, DType::kF64, 33);
  GroupedExperts::Saved saved;
  experts.Forward(x, ids, w, &saved);
  experts.Backward(dy, saved);
  const Tensor once = experts.w2(1).grad.Clone();
  experts.Backward(dy, saved);
  for (int64_t i = 0; i < once.numel(); ++i) {
    EXPECT_NEAR(experts.w2(1).grad.GetAsDouble(i), 2 * once.GetAsDouble(i), 1e-12);
  }
}

TEST(GroupedExpertsTest, Float32MatchesFloat64) {
  const int64_t tokens = 40, hidden = 32, inter = 48, num_experts = 6, top_k = 2;
  GroupedExperts e32("experts", num_experts, hidden, inter, DType::kF32);
  GroupedExperts e64("experts", num_experts, hidden, inter, DType::kF64);
  FillExperts(&e64, 40);
  const std::vector<Parameter*> p32 = e32.Parameters(), p64 = e64.Parameters();
  for (size_t i = 0; i < p32.size(); ++i) p32[i]->value.CopyFrom(p64[i]->value.Cast(DType::kF32));
  // Distinct experts per token: e and (e + 1 + offset) mod E.
  Tensor ids = Tensor::Empty({tokens, top_k}, DType::kI32);
  const Tensor draws = testing::RandomIds({tokens, top_k}, num_experts, 41);
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t first = draws.data<int32_t>()[2 * t];
    ids.data<int32_t>()[2 * t] = first;
    ids.data<int32_t>()[2 * t + 1] =
        (first + 1 + draws.data<int32_t>()[2 * t + 1] % (num_experts - 1)) % num_experts;
  }
  const Tensor x = RandomTensor({tokens, hidden}, DType::kF64, 42);
  const Tensor w = RandomTensor({tokens, top_k}, DType::kF64, 43);
  const Tensor dy = RandomTensor({tokens, hidden}, DType::kF64, 44);
  GroupedExperts::Saved s32, s64;
  const Tensor y32 = e32.Forward(x.Cast(DType::kF32), ids, w.Cast(DType::kF32), &s32);
  const Tensor y64 = e64.Forward(x, ids, w, &s64);
  EXPECT_LT(MaxRelativeError(y32, y64), 1e-5);
  const GroupedExperts::Grads g32 = e32.Backward(dy.Cast(DType::kF32), s32);
  const GroupedExperts::Grads g64 = e64.Backward(dy, s64);
  EXPECT_LT(MaxRelativeError(g32.dx_TH, g64.dx_TH), 1e-5);
  EXPECT_LT(MaxRelativeError(g32.dweights_TK, g64.dweights_TK), 1e-5);
  for (size_t i = 0; i < p32.size(); ++i) {
    EXPECT_LT(MaxRelativeError(p32[i]->grad, p64[i]->grad), 1e-5) << p32[i]->name;
  }
}

TEST(GroupedExpertsDeathTest, BadShapesNameTheLayer) {
  GroupedExperts experts("model.layers.1.block_sparse_moe.experts", 4, 8, 16);
  GroupedExperts::Saved saved;
  const Tensor x = Tensor::Zeros({3, 8}, DType::kF32);
  const Tensor w = Tensor::Zeros({3, 2}, DType::kF32);
  EXPECT_DEATH(
      experts.Forward(Tensor::Zeros({3, 7}, DType::kF32), Ids(3, 2, {0, 1, 0, 1, 0, 1}), w, &saved),
      "model.layers.1.block_sparse_moe.experts: input must be \\[rows, 8\\]");
  EXPECT_DEATH(experts.Forward(x, Ids(3, 2, {0, 1, 0, 1, 0, 9}), w, &saved),
               "expert id 9 of token 2 choice 1 is outside \\[0, 4\\)");
  EXPECT_DEATH(
      experts.Forward(x, Ids(3, 2, {0, 1, 0, 1, 0, 1}), Tensor::Zeros({3, 1}, DType::kF32), &saved),
      "experts: weights must be f32\\[3, 2\\]");
  GroupedExperts::RowsSaved rows_saved;
  EXPECT_DEATH(experts.ForwardRows(x, {0, 1, 1, 2}, &rows_saved),
               "expert_offsets must have num_experts \\+ 1 = 5 entries");
  EXPECT_DEATH(GroupedExperts("ex", 4, 8, 16, DType::kF32, Device::kCuda),
               "ex: the CUDA MoE path is not built yet");
}

}  // namespace
}  // namespace moe
