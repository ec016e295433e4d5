#include "model/transformer_block.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Central differences in double, h = 1e-5, away from top-k switches
// (asserted): the bound of the core layers.
constexpr double kGradTolerance = 1e-7;

ModelConfig BlockConfig() {
  ModelConfig config;
  config.hidden_size = 16;
  config.intermediate_size = 12;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.num_local_experts = 4;
  config.num_experts_per_tok = 2;
  config.max_position_embeddings = 16;
  return config;
}

std::shared_ptr<const Rope> RopeFor(const ModelConfig& config, DType dtype) {
  return std::make_shared<const Rope>(config.resolved_head_dim(), config.max_position_embeddings,
                                      config.rope_theta, dtype);
}

// Random weights, norms included (a weight of one would hide a wrong norm
// gradient that only scales).
void Fill(TransformerBlock* block, uint64_t seed) {
  for (Parameter* p : block->Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), p->value.dtype(), seed++, 0.4));
  }
}

double MinTopKGap(const Tensor& logits_TE, int64_t top_k) {
  const int64_t tokens = logits_TE.dim(0), experts = logits_TE.dim(1);
  double gap = INFINITY;
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> row(experts);
    for (int64_t e = 0; e < experts; ++e) row[e] = logits_TE.GetAsDouble(t * experts + e);
    std::sort(row.rbegin(), row.rend());
    gap = std::min(gap, row[top_k - 1] - row[top_k]);
  }
  return gap;
}

// loss = <y, dy> + c_aux * aux + c_z * z over one block: every path at once
// (residuals, norms, attention, experts, routing weights, router losses).
TEST(TransformerBlockTest, BackwardMatchesFiniteDifferences) {
  const ModelConfig config = BlockConfig();
  const double c_aux = 0.5, c_z = 0.2;
  TransformerBlock block(0, config, RopeFor(config, DType::kF64), DType::kF64);
  Fill(&block, 40);
  Tensor x = RandomTensor({2, 5, 16}, DType::kF64, 1);
  const Tensor dy = RandomTensor({2, 5, 16}, DType::kF64, 2);

  auto loss = [&] {
    TransformerBlock::Saved s;
    const TransformerBlock::Output out = block.Forward(x, &s);
    return Dot(out.y, dy) + c_aux * ComputeLoadBalancingLoss(out.stats, 1, 1).aux +
           c_z * ComputeZLoss(out.stats, 1, 1).z;
  };
  TransformerBlock::Saved saved;
  const TransformerBlock::Output out = block.Forward(x, &saved);
  ASSERT_EQ(out.y.shape(), x.shape());
  ASSERT_GT(MinTopKGap(out.logits_TE, 2), 1e-3) << "pick another seed: near tie";
  const Tensor dx = block.Backward(dy, ComputeLoadBalancingLoss(out.stats, c_aux, 1).daux_dprob,
                                   ComputeZLoss(out.stats, c_z, 1).z_scale, saved);

  std::vector<int64_t> checked;
  EXPECT_LT(GradientError(dx, NumericalGradient(x, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  for (Parameter* p : block.Parameters()) {
    const Tensor analytic = p->grad.Clone();
    const Tensor numeric = NumericalGradient(p->value, loss, 1e-5, 16, &checked);
    EXPECT_LT(GradientError(analytic, numeric, checked), kGradTolerance) << p->name;
  }
}

// With o_proj and every w2 zero, both sub-blocks add zero: the block is the
// identity, exactly (the residual wiring, nothing else).
TEST(TransformerBlockTest, ZeroBranchesLeaveTheResidualStream) {
  const ModelConfig config = BlockConfig();
  TransformerBlock block(0, config, RopeFor(config, DType::kF32));
  Fill(&block, 50);
  block.self_attn().o_proj().weight().value.SetZero();
  for (int64_t e = 0; e < config.num_local_experts; ++e) {
    block.block_sparse_moe().experts().w2(e).value.SetZero();
  }
  const Tensor x = RandomTensor({2, 4, 16}, DType::kF32, 3);
  TransformerBlock::Saved saved;
  const Tensor y = block.Forward(x, &saved).y;
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(y.GetAsDouble(i), x.GetAsDouble(i)) << i;
  // And backward passes dy straight through.
  const Tensor dy = RandomTensor({2, 4, 16}, DType::kF32, 4);
  const Tensor dx = block.Backward(dy, {}, 0, saved);
  for (int64_t i = 0; i < dy.numel(); ++i) ASSERT_EQ(dx.GetAsDouble(i), dy.GetAsDouble(i)) << i;
}

TEST(TransformerBlockTest, ParametersAreNamedAsHuggingFaceSavesThem) {
  ModelConfig config = BlockConfig();
  config.num_local_experts = 2;
  config.num_experts_per_tok = 1;
  TransformerBlock block(5, config, RopeFor(config, DType::kF32));
  std::vector<std::string> names;
  for (const Parameter* p : block.Parameters()) names.push_back(p->name);
  const std::string l = "model.layers.5.";
  EXPECT_EQ(names, (std::vector<std::string>{
                       l + "input_layernorm.weight",
                       l + "self_attn.q_proj.weight",
                       l + "self_attn.k_proj.weight",
                       l + "self_attn.v_proj.weight",
                       l + "self_attn.o_proj.weight",
                       l + "post_attention_layernorm.weight",
                       l + "block_sparse_moe.gate.weight",
                       l + "block_sparse_moe.experts.0.w1.weight",
                       l + "block_sparse_moe.experts.0.w2.weight",
                       l + "block_sparse_moe.experts.0.w3.weight",
                       l + "block_sparse_moe.experts.1.w1.weight",
                       l + "block_sparse_moe.experts.1.w2.weight",
                       l + "block_sparse_moe.experts.1.w3.weight",
                   }));
}

TEST(TransformerBlockTest, Float32MatchesFloat64) {
  const ModelConfig config = BlockConfig();
  TransformerBlock b32(0, config, RopeFor(config, DType::kF32), DType::kF32);
  TransformerBlock b64(0, config, RopeFor(config, DType::kF64), DType::kF64);
  Fill(&b64, 60);
  const std::vector<Parameter*> p32 = b32.Parameters(), p64 = b64.Parameters();
  for (size_t i = 0; i < p32.size(); ++i) p32[i]->value.CopyFrom(p64[i]->value.Cast(DType::kF32));
  const Tensor x = RandomTensor({2, 8, 16}, DType::kF64, 5);
  const Tensor dy = RandomTensor({2, 8, 16}, DType::kF64, 6);
  TransformerBlock::Saved s32, s64;
  const TransformerBlock::Output o32 = b32.Forward(x.Cast(DType::kF32), &s32);
  const TransformerBlock::Output o64 = b64.Forward(x, &s64);
  ASSERT_GT(MinTopKGap(o64.logits_TE, 2), 1e-4);
  EXPECT_LT(MaxRelativeError(o32.y, o64.y), 1e-5);
  EXPECT_LT(MaxRelativeError(b32.Backward(dy.Cast(DType::kF32), {}, 0, s32),
                             b64.Backward(dy, {}, 0, s64)),
            1e-5);
}

TEST(TransformerBlockDeathTest, WrongWidthNamesTheLayer) {
  const ModelConfig config = BlockConfig();
  TransformerBlock block(2, config, RopeFor(config, DType::kF32));
  TransformerBlock::Saved saved;
  EXPECT_DEATH(block.Forward(Tensor::Zeros({1, 3, 15}, DType::kF32), &saved),
               "model.layers.2.input_layernorm.weight: input must be \\[..., 16\\]");
}

}  // namespace
}  // namespace moe
