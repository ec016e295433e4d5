#include "model/config.h"

#include <algorithm>

#include <string>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

absl::Status Invalid(const std::string& field, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat("model config: ", field, " ", problem));
}

absl::Status RequirePositive(const char* field, int64_t value) {
  if (value > 0) return absl::OkStatus();
  return Invalid(field, absl::StrCat("must be positive, got ", value));
}

// Reads an optional integer field; null leaves `out` unchanged.
absl::Status ReadInt(const Json& json, const char* key, int64_t* out) {
  const Json* value = json.Find(key);
  if (value == nullptr || value->is_null()) return absl::OkStatus();
  if (!value->is_int()) {
    return Invalid(key, absl::StrCat("must be an integer, got ", value->Dump()));
  }
  *out = value->as_int();
  return absl::OkStatus();
}

absl::Status ReadDouble(const Json& json, const char* key, double* out) {
  const Json* value = json.Find(key);
  if (value == nullptr || value->is_null()) return absl::OkStatus();
  if (!value->is_number()) {
    return Invalid(key, absl::StrCat("must be a number, got ", value->Dump()));
  }
  *out = value->as_double();
  return absl::OkStatus();
}

}  // namespace

absl::Status ModelConfig::CheckHfExportable() const {
  if (!moe_layer_pattern.empty() && std::any_of(moe_layer_pattern.begin(), moe_layer_pattern.end(),
                                                [](int v) { return v == 0; })) {
    return absl::FailedPreconditionError(
        "the model has dense layers between its MoE layers (moe_layer_pattern), which "
        "MixtralForCausalLM cannot hold; keep it in our checkpoint format");
  }
  for (int64_t e : moe_num_experts_per_layer) {
    if (e != num_local_experts) {
      return absl::FailedPreconditionError(
          "the model has a different number of experts per layer (moe_num_experts_per_layer, "
          "PR-MoE), which MixtralForCausalLM cannot hold; keep it in our checkpoint format");
    }
  }
  if (moe_shared_expert_intermediate_size > 0) {
    return absl::FailedPreconditionError(
        "the model has a shared expert (moe_shared_expert_intermediate_size > 0), which "
        "MixtralForCausalLM cannot hold; keep it in our checkpoint format");
  }
  if (moe_use_residual) {
    return absl::FailedPreconditionError(
        "the model is a Residual-MoE (moe_use_residual), which MixtralForCausalLM cannot hold; "
        "keep it in our checkpoint format");
  }
  // Mixtral routes by softmax over all experts, top-k, renormalised.
  if (moe_router_score_function != "softmax" || moe_router_pre_softmax || moe_router_topp > 0 ||
      moe_router_num_groups > 0 || moe_router_enable_expert_bias) {
    return absl::FailedPreconditionError(
        "the model's router is not Mixtral's (moe_router_score_function, "
        "moe_router_pre_softmax, moe_router_topp, moe_router_num_groups or "
        "moe_router_enable_expert_bias is set), so MixtralForCausalLM would route differently; "
        "keep it in our checkpoint format");
  }
  return absl::OkStatus();
}

absl::StatusOr<RouterOptions> RouterOptionsOf(const ModelConfig& c) {
  absl::StatusOr<ScoreFunction> score = ParseScoreFunction(c.moe_router_score_function);
  if (!score.ok()) return score.status();
  RouterOptions r;
  r.num_experts = c.num_local_experts;
  r.top_k = c.num_experts_per_tok;
  r.score_function = *score;
  r.pre_softmax = c.moe_router_pre_softmax;
  r.topp = c.moe_router_topp;
  r.topp_max_experts = c.moe_router_topp_max_experts;
  r.num_groups = c.moe_router_num_groups;
  r.group_topk = c.moe_router_group_topk;
  r.enable_expert_bias = c.moe_router_enable_expert_bias;
  return r;
}

absl::Status ModelConfig::Validate() const {
  for (const auto& [field, value] : {std::pair<const char*, int64_t>{"vocab_size", vocab_size},
                                     {"hidden_size", hidden_size},
                                     {"intermediate_size", intermediate_size},
                                     {"num_hidden_layers", num_hidden_layers},
                                     {"num_attention_heads", num_attention_heads},
                                     {"num_key_value_heads", num_key_value_heads},
                                     {"num_local_experts", num_local_experts},
                                     {"num_experts_per_tok", num_experts_per_tok},
                                     {"max_position_embeddings", max_position_embeddings}}) {
    if (absl::Status s = RequirePositive(field, value); !s.ok()) return s;
  }
  if (vocab_size > INT32_MAX) {
    return Invalid("vocab_size", absl::StrCat("must fit in int32 token ids, got ", vocab_size));
  }
  if (head_dim < 0) return Invalid("head_dim", "must be positive, or 0/null to derive it");
  if (head_dim == 0 && hidden_size % num_attention_heads != 0) {
    return Invalid("hidden_size",
                   absl::StrCat("(", hidden_size, ") must be divisible by num_attention_heads (",
                                num_attention_heads, ") when head_dim is not set; ",
                                "set head_dim or change the head count"));
  }
  if (resolved_head_dim() % 2 != 0) {
    return Invalid("head_dim",
                   absl::StrCat("must be even for rotary embeddings, got ", resolved_head_dim()));
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return Invalid("num_key_value_heads",
                   absl::StrCat("(", num_key_value_heads, ") must divide num_attention_heads (",
                                num_attention_heads, ")"));
  }
  if (num_experts_per_tok > num_local_experts) {
    return Invalid("num_experts_per_tok",
                   absl::StrCat("(", num_experts_per_tok, ") cannot exceed num_local_experts (",
                                num_local_experts, ")"));
  }
  if (!(rope_theta > 0))
    return Invalid("rope_theta", absl::StrCat("must be > 0, got ", rope_theta));
  if (!(rms_norm_eps > 0)) {
    return Invalid("rms_norm_eps", absl::StrCat("must be > 0, got ", rms_norm_eps));
  }
  if (!(router_aux_loss_coef >= 0)) {
    return Invalid("router_aux_loss_coef",
                   absl::StrCat("must be >= 0, got ", router_aux_loss_coef));
  }
  if (!moe_layer_pattern.empty()) {
    if (static_cast<int64_t>(moe_layer_pattern.size()) != num_hidden_layers) {
      return Invalid("moe_layer_pattern",
                     absl::StrCat("has ", moe_layer_pattern.size(), " entries for ",
                                  num_hidden_layers, " layers; give one 0/1 per layer"));
    }
    if (std::all_of(moe_layer_pattern.begin(), moe_layer_pattern.end(),
                    [](int v) { return v == 0; })) {
      return Invalid("moe_layer_pattern", "has no MoE layer; mark at least one layer with 1");
    }
    for (int v : moe_layer_pattern) {
      if (v != 0 && v != 1) {
        return Invalid("moe_layer_pattern", absl::StrCat("entries must be 0 or 1, got ", v));
      }
    }
  }
  if (!moe_num_experts_per_layer.empty()) {
    if (static_cast<int64_t>(moe_num_experts_per_layer.size()) != num_hidden_layers) {
      return Invalid("moe_num_experts_per_layer",
                     absl::StrCat("has ", moe_num_experts_per_layer.size(), " entries for ",
                                  num_hidden_layers, " layers; give one count per layer"));
    }
    for (int64_t e : moe_num_experts_per_layer) {
      if (e < num_experts_per_tok || e > num_local_experts) {
        return Invalid(
            "moe_num_experts_per_layer",
            absl::StrCat("entries must lie in [num_experts_per_tok = ", num_experts_per_tok,
                         ", num_local_experts = ", num_local_experts, "], got ", e));
      }
    }
  }
  if (!moe_num_experts_per_layer.empty() && moe_router_load_balancing_type == "hf_aux_loss" &&
      std::any_of(moe_num_experts_per_layer.begin(), moe_num_experts_per_layer.end(),
                  [&](int64_t e) { return e != num_local_experts; })) {
    return Invalid("moe_router_load_balancing_type",
                   "hf_aux_loss pools every layer's router statistics and needs the same number "
                   "of experts in every layer; with moe_num_experts_per_layer use aux_loss, "
                   "seq_aux_loss, global_aux_loss or none");
  }
  if (moe_shared_expert_intermediate_size < 0) {
    return Invalid("moe_shared_expert_intermediate_size",
                   absl::StrCat("must be >= 0 (0 = no shared expert), got ",
                                moe_shared_expert_intermediate_size));
  }
  if (!(moe_expert_capacity_factor >= 0)) {
    return Invalid(
        "moe_expert_capacity_factor",
        absl::StrCat("must be > 0, or 0 for dropless routing, got ", moe_expert_capacity_factor));
  }
  if (moe_token_drop_policy != "probs" && moe_token_drop_policy != "position") {
    return Invalid("moe_token_drop_policy",
                   absl::StrCat("must be probs or position, got '", moe_token_drop_policy, "'"));
  }
  if (moe_pad_expert_input_to_capacity && moe_expert_capacity_factor <= 0) {
    return Invalid("moe_pad_expert_input_to_capacity",
                   "needs a capacity (moe_expert_capacity_factor > 0)");
  }
  if (moe_router_load_balancing_type != "hf_aux_loss" &&
      moe_router_load_balancing_type != "aux_loss" &&
      moe_router_load_balancing_type != "seq_aux_loss" &&
      moe_router_load_balancing_type != "global_aux_loss" &&
      moe_router_load_balancing_type != "none") {
    return Invalid("moe_router_load_balancing_type",
                   absl::StrCat("must be hf_aux_loss, aux_loss, seq_aux_loss, global_aux_loss or "
                                "none, got '",
                                moe_router_load_balancing_type, "'"));
  }
  if (!(moe_router_topp_entropy_coeff >= 0) || !(moe_router_bias_update_rate >= 0)) {
    return Invalid("moe_router_topp_entropy_coeff", "and moe_router_bias_update_rate must be >= 0");
  }
  {
    absl::StatusOr<RouterOptions> router = RouterOptionsOf(*this);
    if (!router.ok()) return router.status();
    if (absl::Status s = ValidateRouterOptions(*router); !s.ok()) return s;
  }
  if (!(router_z_loss_coef >= 0)) {
    return Invalid("router_z_loss_coef", absl::StrCat("must be >= 0, got ", router_z_loss_coef));
  }
  if (!(initializer_range > 0)) {
    return Invalid("initializer_range", absl::StrCat("must be > 0, got ", initializer_range));
  }
  if (tie_word_embeddings) {
    return Invalid("tie_word_embeddings",
                   "= true is not supported: Mixtral keeps a separate lm_head; set it to false");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ModelConfig::FromHfJson(const Json& json) {
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: config.json must be a JSON object, got ", json.type_name()));
  }
  ModelConfig c;
  c.max_position_embeddings = 4096 * 32;  // MixtralConfig's default
  for (const auto& [key, field] : {std::pair<const char*, int64_t*>{"vocab_size", &c.vocab_size},
                                   {"hidden_size", &c.hidden_size},
                                   {"intermediate_size", &c.intermediate_size},
                                   {"num_hidden_layers", &c.num_hidden_layers},
                                   {"num_attention_heads", &c.num_attention_heads},
                                   {"head_dim", &c.head_dim},
                                   {"num_local_experts", &c.num_local_experts},
                                   {"num_experts_per_tok", &c.num_experts_per_tok},
                                   {"max_position_embeddings", &c.max_position_embeddings}}) {
    if (absl::Status s = ReadInt(json, key, field); !s.ok()) return s;
  }
  // HF: a null num_key_value_heads means multi-head attention.
  c.num_key_value_heads = c.num_attention_heads;
  if (absl::Status s = ReadInt(json, "num_key_value_heads", &c.num_key_value_heads); !s.ok()) {
    return s;
  }
  for (const auto& [key, field] : {std::pair<const char*, double*>{"rms_norm_eps", &c.rms_norm_eps},
                                   {"router_aux_loss_coef", &c.router_aux_loss_coef},
                                   {"router_z_loss_coef", &c.router_z_loss_coef},
                                   {"initializer_range", &c.initializer_range},
                                   {"rope_theta", &c.rope_theta}}) {
    if (absl::Status s = ReadDouble(json, key, field); !s.ok()) return s;
  }
  // transformers 5 keeps theta inside rope_parameters.
  if (const Json* rope = json.Find("rope_parameters"); rope != nullptr && rope->is_object()) {
    if (const Json* type = rope->Find("rope_type");
        type != nullptr && type->is_string() && type->as_string() != "default") {
      return Invalid("rope_parameters.rope_type",
                     absl::StrCat("\"", type->as_string(),
                                  "\" is not supported; only the default rotary embedding is"));
    }
    if (absl::Status s = ReadDouble(*rope, "rope_theta", &c.rope_theta); !s.ok()) return s;
  }
  if (const Json* scaling = json.Find("rope_scaling"); scaling != nullptr && !scaling->is_null()) {
    return Invalid("rope_scaling", "is not supported; remove it or set it to null");
  }
  if (const Json* tie = json.Find("tie_word_embeddings"); tie != nullptr && tie->is_bool()) {
    c.tie_word_embeddings = tie->as_bool();
  }
  if (const Json* act = json.Find("hidden_act");
      act != nullptr && act->is_string() && act->as_string() != "silu") {
    return Invalid("hidden_act",
                   absl::StrCat("\"", act->as_string(), "\" is not supported; Mixtral uses silu"));
  }
  if (const Json* window = json.Find("sliding_window"); window != nullptr && !window->is_null()) {
    return Invalid("sliding_window", "is not supported; set it to null (full causal attention)");
  }
  // Our extensions (ToJson writes them; a Hugging Face config has none).
  for (const auto& [key, field] :
       {std::pair<const char*, int64_t*>{"moe_shared_expert_intermediate_size",
                                         &c.moe_shared_expert_intermediate_size},
        {"moe_router_topp_max_experts", &c.moe_router_topp_max_experts},
        {"moe_router_num_groups", &c.moe_router_num_groups},
        {"moe_router_group_topk", &c.moe_router_group_topk}}) {
    if (absl::Status s = ReadInt(json, key, field); !s.ok()) return s;
  }
  for (const auto& [key, field] :
       {std::pair<const char*, double*>{"moe_expert_capacity_factor",
                                        &c.moe_expert_capacity_factor},
        {"moe_router_topp", &c.moe_router_topp},
        {"moe_router_topp_entropy_coeff", &c.moe_router_topp_entropy_coeff},
        {"moe_router_bias_update_rate", &c.moe_router_bias_update_rate}}) {
    if (absl::Status s = ReadDouble(json, key, field); !s.ok()) return s;
  }
  for (const auto& [key, field] :
       {std::pair<const char*, bool*>{"moe_use_residual", &c.moe_use_residual},
        {"moe_pad_expert_input_to_capacity", &c.moe_pad_expert_input_to_capacity},
        {"moe_router_pre_softmax", &c.moe_router_pre_softmax},
        {"moe_router_enable_expert_bias", &c.moe_router_enable_expert_bias}}) {
    if (const Json* v = json.Find(key); v != nullptr) {
      if (!v->is_bool())
        return Invalid(key, absl::StrCat("must be true or false, got ", v->Dump()));
      *field = v->as_bool();
    }
  }
  for (const auto& [key, field] :
       {std::pair<const char*, std::string*>{"moe_token_drop_policy", &c.moe_token_drop_policy},
        {"moe_router_score_function", &c.moe_router_score_function},
        {"moe_router_load_balancing_type", &c.moe_router_load_balancing_type}}) {
    if (const Json* v = json.Find(key); v != nullptr) {
      if (!v->is_string()) return Invalid(key, absl::StrCat("must be a string, got ", v->Dump()));
      *field = v->as_string();
    }
  }
  for (const char* key : {"moe_layer_pattern", "moe_num_experts_per_layer"}) {
    const Json* v = json.Find(key);
    if (v == nullptr) continue;
    if (!v->is_array()) return Invalid(key, absl::StrCat("must be a list, got ", v->Dump()));
    for (const Json& item : v->as_array()) {
      if (!item.is_int())
        return Invalid(key, absl::StrCat("entries must be integers, got ", item.Dump()));
      if (std::string_view(key) == "moe_layer_pattern") {
        c.moe_layer_pattern.push_back(static_cast<int>(item.as_int()));
      } else {
        c.moe_num_experts_per_layer.push_back(item.as_int());
      }
    }
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

Json ModelConfig::ToJson() const {
  Json j = ToHfJson();
  j.Set("moe_shared_expert_intermediate_size", moe_shared_expert_intermediate_size);
  j.Set("moe_use_residual", moe_use_residual);
  j.Set("moe_expert_capacity_factor", Json::Real(moe_expert_capacity_factor));
  j.Set("moe_token_drop_policy", moe_token_drop_policy);
  j.Set("moe_pad_expert_input_to_capacity", moe_pad_expert_input_to_capacity);
  j.Set("moe_router_score_function", moe_router_score_function);
  j.Set("moe_router_pre_softmax", moe_router_pre_softmax);
  j.Set("moe_router_topp", Json::Real(moe_router_topp));
  j.Set("moe_router_topp_max_experts", moe_router_topp_max_experts);
  j.Set("moe_router_topp_entropy_coeff", Json::Real(moe_router_topp_entropy_coeff));
  j.Set("moe_router_num_groups", moe_router_num_groups);
  j.Set("moe_router_group_topk", moe_router_group_topk);
  j.Set("moe_router_enable_expert_bias", moe_router_enable_expert_bias);
  j.Set("moe_router_bias_update_rate", Json::Real(moe_router_bias_update_rate));
  j.Set("moe_router_load_balancing_type", moe_router_load_balancing_type);
  if (!moe_layer_pattern.empty()) {
    Json pattern = Json::MakeArray();
    for (int v : moe_layer_pattern) pattern.Append(static_cast<double>(v));
    j.Set("moe_layer_pattern", std::move(pattern));
  }
  if (!moe_num_experts_per_layer.empty()) {
    Json experts = Json::MakeArray();
    for (int64_t e : moe_num_experts_per_layer) experts.Append(static_cast<double>(e));
    j.Set("moe_num_experts_per_layer", std::move(experts));
  }
  return j;
}

absl::StatusOr<ModelConfig> ModelConfig::FromHfFile(const std::string& path) {
  absl::StatusOr<Json> json = ReadJsonFile(path);
  if (!json.ok()) return json.status();
  absl::StatusOr<ModelConfig> config = FromHfJson(*json);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

Json ModelConfig::ToHfJson() const {
  Json j = Json::MakeObject();
  j.Set("architectures", Json::MakeArray({Json("MixtralForCausalLM")}));
  j.Set("model_type", "mixtral");
  j.Set("vocab_size", vocab_size);
  j.Set("hidden_size", hidden_size);
  j.Set("intermediate_size", intermediate_size);
  j.Set("num_hidden_layers", num_hidden_layers);
  j.Set("num_attention_heads", num_attention_heads);
  j.Set("num_key_value_heads", num_key_value_heads);
  j.Set("head_dim", resolved_head_dim());
  j.Set("num_local_experts", num_local_experts);
  j.Set("num_experts_per_tok", num_experts_per_tok);
  j.Set("max_position_embeddings", max_position_embeddings);
  j.Set("rope_theta", Json::Real(rope_theta));
  j.Set("rms_norm_eps", Json::Real(rms_norm_eps));
  j.Set("router_aux_loss_coef", Json::Real(router_aux_loss_coef));
  j.Set("router_z_loss_coef", Json::Real(router_z_loss_coef));
  j.Set("initializer_range", Json::Real(initializer_range));
  j.Set("tie_word_embeddings", tie_word_embeddings);
  j.Set("hidden_act", "silu");
  j.Set("sliding_window", Json());
  j.Set("output_router_logits", false);
  j.Set("torch_dtype", "float32");  // transformers 4
  j.Set("dtype", "float32");        // transformers 5
  return j;
}

}  // namespace moe
