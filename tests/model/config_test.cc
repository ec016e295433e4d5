#include "model/config.h"

#include <gtest/gtest.h>

namespace moe {
namespace {

ModelConfig Tiny() {
  ModelConfig c;
  c.vocab_size = 257;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.max_position_embeddings = 128;
  return c;
}

absl::StatusOr<ModelConfig> Parse(const std::string& text) {
  absl::StatusOr<Json> json = ParseJson(text);
  if (!json.ok()) return json.status();
  return ModelConfig::FromHfJson(*json);
}

TEST(ModelConfigTest, TinyIsValidAndRoundTripsThroughHfJson) {
  const ModelConfig c = Tiny();
  ASSERT_TRUE(c.Validate().ok()) << c.Validate();
  absl::StatusOr<ModelConfig> back = ModelConfig::FromHfJson(c.ToHfJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToHfJson(), c.ToHfJson());
  EXPECT_EQ(back->resolved_head_dim(), 16);
}

TEST(ModelConfigTest, ReadsTransformers4And5Layouts) {
  const std::string common =
      R"("vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": null, "head_dim": null,
         "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": null)";
  absl::StatusOr<ModelConfig> v4 = Parse("{" + common + R"(, "rope_theta": 5000.0})");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->rope_theta, 5000.0);
  EXPECT_EQ(v4->num_key_value_heads, 4);  // null means multi-head
  EXPECT_EQ(v4->resolved_head_dim(), 8);
  absl::StatusOr<ModelConfig> v5 = Parse(
      "{" + common + R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 7000.0}})");
  ASSERT_TRUE(v5.ok()) << v5.status();
  EXPECT_EQ(v5->rope_theta, 7000.0);
  absl::StatusOr<ModelConfig> defaults = Parse("{" + common + "}");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->rope_theta, 1e6);  // MixtralConfig's default
}

TEST(ModelConfigTest, EveryInvalidFieldIsNamed) {
  struct Case {
    void (*mutate)(ModelConfig*);
    const char* expected;
  };
  const Case cases[] = {
      {[](ModelConfig* c) { c->hidden_size = 0; }, "hidden_size must be positive"},
      {[](ModelConfig* c) { c->vocab_size = -3; }, "vocab_size must be positive"},
      {[](ModelConfig* c) { c->hidden_size = 66; }, "must be divisible by num_attention_heads"},
      {[](ModelConfig* c) { c->num_key_value_heads = 3; }, "num_key_value_heads (3) must divide"},
      {[](ModelConfig* c) { c->num_experts_per_tok = 5; }, "cannot exceed num_local_experts"},
      {[](ModelConfig* c) { c->head_dim = 7; }, "head_dim must be even"},
      {[](ModelConfig* c) { c->rms_norm_eps = 0; }, "rms_norm_eps must be > 0"},
      {[](ModelConfig* c) { c->rope_theta = -1; }, "rope_theta must be > 0"},
      {[](ModelConfig* c) { c->router_aux_loss_coef = -1; }, "router_aux_loss_coef must be >= 0"},
      {[](ModelConfig* c) { c->tie_word_embeddings = true; }, "tie_word_embeddings"},
  };
  for (const Case& test_case : cases) {
    ModelConfig c = Tiny();
    test_case.mutate(&c);
    const absl::Status status = c.Validate();
    EXPECT_FALSE(status.ok()) << test_case.expected;
    EXPECT_NE(status.message().find(test_case.expected), std::string::npos) << status;
  }
}

TEST(ModelConfigTest, UnsupportedHfFeaturesAreErrorsNotIgnored) {
  const std::string base =
      R"("vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_local_experts": 4, "num_experts_per_tok": 2)";
  EXPECT_NE(
      Parse("{" + base + R"(, "sliding_window": 4096})").status().message().find("sliding_window"),
      std::string::npos);
  EXPECT_NE(Parse("{" + base + R"(, "hidden_act": "gelu"})").status().message().find("gelu"),
            std::string::npos);
  EXPECT_NE(Parse("{" + base + R"(, "rope_scaling": {"type": "yarn"}})")
                .status()
                .message()
                .find("rope_scaling"),
            std::string::npos);
  EXPECT_NE(
      Parse(R"({"hidden_size": "big"})").status().message().find("hidden_size must be an integer"),
      std::string::npos);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

TEST(ModelConfigTest, OurExtensionsRoundTripThroughToJsonButNotHfJson) {
  ModelConfig c = Tiny();
  c.moe_shared_expert_intermediate_size = 32;
  c.moe_use_residual = true;
  c.moe_expert_capacity_factor = 1.25;
  c.moe_token_drop_policy = "position";
  c.moe_router_score_function = "sigmoid";
  c.moe_router_num_groups = 2;
  c.moe_router_group_topk = 1;
  c.moe_router_enable_expert_bias = true;
  c.moe_router_load_balancing_type = "seq_aux_loss";
  ASSERT_TRUE(c.Validate().ok()) << c.Validate();
  absl::StatusOr<ModelConfig> back = ModelConfig::FromHfJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToJson(), c.ToJson());
  EXPECT_EQ(back->moe_router_score_function, "sigmoid");
  EXPECT_EQ(back->moe_shared_expert_intermediate_size, 32);
  // config.json for transformers carries none of them.
  EXPECT_EQ(c.ToHfJson().Find("moe_use_residual"), nullptr);
  // Floats stay floats ("0.0"), which transformers' typed configs require.
  EXPECT_NE(Tiny().ToHfJson().Dump().find("\"router_z_loss_coef\":0.0"), std::string::npos);
}

TEST(ModelConfigTest, OnlyMixtralShapedModelsExportToHuggingFace) {
  EXPECT_TRUE(Tiny().CheckHfExportable().ok());
  ModelConfig shared = Tiny();
  shared.moe_shared_expert_intermediate_size = 8;
  EXPECT_NE(shared.CheckHfExportable().message().find("shared expert"), std::string::npos);
  ModelConfig residual = Tiny();
  residual.moe_use_residual = true;
  EXPECT_NE(residual.CheckHfExportable().message().find("Residual-MoE"), std::string::npos);
  ModelConfig sigmoid = Tiny();
  sigmoid.moe_router_score_function = "sigmoid";
  EXPECT_NE(sigmoid.CheckHfExportable().message().find("router is not Mixtral's"),
            std::string::npos);
  ModelConfig capacity = Tiny();
  capacity.moe_expert_capacity_factor = 1.0;  // the weights are Mixtral's: exportable
  EXPECT_TRUE(capacity.CheckHfExportable().ok());
}

}  // namespace
}  // namespace moe
