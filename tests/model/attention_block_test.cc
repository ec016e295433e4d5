#include "model/attention_block.h"

#include <gtest/gtest.h>

#include <memory>
#include <ostream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::Dot;
using testing::GradientError;
using testing::MaxRelativeError;
using testing::NumericalGradient;
using testing::RandomTensor;

// Central differences in double with h = 1e-5 on a smooth function: the bound
// of the core layers (truncation ~1e-10, rounding ~1e-11 relative).
constexpr double kGradTolerance = 1e-7;

struct Case {
  int64_t heads, kv_heads, head_dim;  // head_dim 0: hidden / heads
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << "heads=" << c.heads << " kv=" << c.kv_heads << " head_dim=" << c.head_dim;
}

ModelConfig AttentionConfig(const Case& c) {
  ModelConfig config;
  config.hidden_size = 16;
  config.num_attention_heads = c.heads;
  config.num_key_value_heads = c.kv_heads;
  config.head_dim = c.head_dim;
  config.max_position_embeddings = 16;
  config.rope_theta = 100.0;  // a short period, so that positions matter at seq 5
  return config;
}

std::shared_ptr<const Rope> RopeFor(const ModelConfig& config, DType dtype) {
  return std::make_shared<const Rope>(config.resolved_head_dim(), config.max_position_embeddings,
                                      config.rope_theta, dtype);
}

void Fill(AttentionBlock* block, uint64_t seed) {
  for (Parameter* p : block->Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), p->value.dtype(), seed++, 0.4));
  }
}

class AttentionBlockGradientTest : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionBlockGradientTest, BackwardMatchesFiniteDifferences) {
  const ModelConfig config = AttentionConfig(GetParam());
  ASSERT_TRUE(config.Validate().ok()) << config.Validate();
  AttentionBlock block("model.layers.0.self_attn", config, RopeFor(config, DType::kF64),
                       DType::kF64);
  Fill(&block, 10);
  Tensor x = RandomTensor({2, 5, 16}, DType::kF64, 1);
  const Tensor dy = RandomTensor({2, 5, 16}, DType::kF64, 2);

  // loss = <forward(x), dy>, whose gradient is backward(dy).
  auto loss = [&] {
    AttentionBlock::Saved saved;
    return Dot(block.Forward(x, &saved), dy);
  };
  AttentionBlock::Saved saved;
  const Tensor y = block.Forward(x, &saved);
  ASSERT_EQ(y.shape(), x.shape());
  const Tensor dx = block.Backward(dy, saved);
  ASSERT_EQ(dx.shape(), x.shape());

  std::vector<int64_t> checked;
  EXPECT_LT(GradientError(dx, NumericalGradient(x, loss, 1e-5, 0, &checked), checked),
            kGradTolerance);
  for (Parameter* p : block.Parameters()) {
    const Tensor analytic = p->grad.Clone();
    const Tensor numeric = NumericalGradient(p->value, loss, 1e-5, 0, &checked);
    EXPECT_LT(GradientError(analytic, numeric, checked), kGradTolerance) << p->name;
  }
}

INSTANTIATE_TEST_SUITE_P(Heads, AttentionBlockGradientTest,
                         ::testing::Values(Case{4, 4, 0}, Case{4, 2, 0}, Case{4, 1, 6},
                                           Case{2, 1, 10}),
                         [](const ::testing::TestParamInfo<Case>& param_info) {
                           return absl::StrCat("H", param_info.param.heads, "KV",
                                               param_info.param.kv_heads, "D",
                                               param_info.param.head_dim);
                         });

TEST(AttentionBlockTest, IsCausal) {
  const ModelConfig config = AttentionConfig({4, 2, 0});
  AttentionBlock block("attn", config, RopeFor(config, DType::kF64), DType::kF64);
  Fill(&block, 20);
  const Tensor x = RandomTensor({1, 6, 16}, DType::kF64, 3);
  Tensor x_changed = x.Clone();
  for (int64_t i = 4 * 16; i < 6 * 16; ++i) x_changed.SetFromDouble(i, 0.5);  // tokens 4, 5
  AttentionBlock::Saved s1, s2;
  const Tensor y1 = block.Forward(x, &s1);
  const Tensor y2 = block.Forward(x_changed, &s2);
  for (int64_t i = 0; i < 4 * 16; ++i) ASSERT_EQ(y1.GetAsDouble(i), y2.GetAsDouble(i)) << i;
  EXPECT_NE(y1.GetAsDouble(4 * 16), y2.GetAsDouble(4 * 16));
}

TEST(AttentionBlockTest, ParametersAreNamedAsHuggingFaceSavesThem) {
  const ModelConfig config = AttentionConfig({4, 1, 6});
  AttentionBlock block("model.layers.3.self_attn", config, RopeFor(config, DType::kF32));
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  for (const Parameter* p : block.Parameters()) {
    names.push_back(p->name);
    shapes.push_back(p->value.shape());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.3.self_attn.q_proj.weight",
                                             "model.layers.3.self_attn.k_proj.weight",
                                             "model.layers.3.self_attn.v_proj.weight",
                                             "model.layers.3.self_attn.o_proj.weight"}));
  EXPECT_EQ(shapes, (std::vector<Shape>{{24, 16}, {6, 16}, {6, 16}, {16, 24}}));
}

TEST(AttentionBlockTest, Float32MatchesFloat64) {
  const ModelConfig config = AttentionConfig({4, 2, 0});
  AttentionBlock b32("attn", config, RopeFor(config, DType::kF32), DType::kF32);
  AttentionBlock b64("attn", config, RopeFor(config, DType::kF64), DType::kF64);
  Fill(&b64, 30);
  const std::vector<Parameter*> p32 = b32.Parameters(), p64 = b64.Parameters();
  for (size_t i = 0; i < p32.size(); ++i) p32[i]->value.CopyFrom(p64[i]->value.Cast(DType::kF32));
  const Tensor x = RandomTensor({2, 9, 16}, DType::kF64, 4);
  const Tensor dy = RandomTensor({2, 9, 16}, DType::kF64, 5);
  AttentionBlock::Saved s32, s64;
  EXPECT_LT(MaxRelativeError(b32.Forward(x.Cast(DType::kF32), &s32), b64.Forward(x, &s64)), 1e-5);
  EXPECT_LT(MaxRelativeError(b32.Backward(dy.Cast(DType::kF32), s32), b64.Backward(dy, s64)), 1e-5);
}

TEST(AttentionBlockDeathTest, WrongWidthNamesTheBlock) {
  const ModelConfig config = AttentionConfig({4, 2, 0});
  AttentionBlock block("model.layers.1.self_attn", config, RopeFor(config, DType::kF32));
  AttentionBlock::Saved saved;
  EXPECT_DEATH(block.Forward(Tensor::Zeros({1, 3, 15}, DType::kF32), &saved),
               "model.layers.1.self_attn: input must be \\[batch, seq, 16\\]");
}

TEST(AttentionBlockDeathTest, TooManyPositionsNamesTheLimit) {
  const ModelConfig config = AttentionConfig({4, 2, 0});
  AttentionBlock block("attn", config, RopeFor(config, DType::kF32));
  AttentionBlock::Saved saved;
  EXPECT_DEATH(block.Forward(Tensor::Zeros({1, 17, 16}, DType::kF32), &saved),
               "max_position_embeddings");
}

}  // namespace
}  // namespace moe
