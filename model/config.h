// The model's shape, with the field names of Hugging Face's MixtralConfig so
// that a config.json reads and writes without translation.
#ifndef MOE_MODEL_CONFIG_H_
#define MOE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/json.h"
#include "moe/router_options.h"

namespace moe {

struct ModelConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 14336;  // of one expert
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 8;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads (HF's null)
  int64_t num_local_experts = 8;
  int64_t num_experts_per_tok = 2;
  int64_t max_position_embeddings = 4096;
  double rope_theta = 1e6;
  double rms_norm_eps = 1e-5;
  double router_aux_loss_coef = 0.001;
  // Not in MixtralConfig (ST-MoE z-loss; Megatron's --moe_z_loss_coeff).
  double router_z_loss_coef = 0.0;
  double initializer_range = 0.02;
  // Not in MixtralConfig: Megatron-Core's expert capacity (moe/capacity.h).
  // 0 = dropless; the policy is "probs" or "position".
  double moe_expert_capacity_factor = 0.0;
  std::string moe_token_drop_policy = "probs";
  bool moe_pad_expert_input_to_capacity = false;
  // Not in MixtralConfig: expert variants. A shared expert of this width
  // beside the routed ones (Megatron-Core, Qwen2-MoE; 0 = none), and
  // DeepSpeed-MoE's Residual-MoE (moe/residual_moe.h). A model with either
  // is not a MixtralForCausalLM: Hugging Face export refuses it.
  int64_t moe_shared_expert_intermediate_size = 0;
  bool moe_use_residual = false;
  // Not in MixtralConfig: which layers are MoE layers and how many experts
  // each has. moe_layer_pattern[i] = 1 for an MoE layer, 0 for a dense
  // SwiGLU MLP of width intermediate_size (Megatron-Core's --moe_layer_freq);
  // empty = every layer is MoE. moe_num_experts_per_layer[i] = the experts of
  // layer i (DeepSpeed's PR-MoE, a "pyramid"); empty = num_local_experts
  // everywhere (which is then the largest count). Either makes a model that
  // MixtralForCausalLM cannot hold.
  std::vector<int> moe_layer_pattern;
  std::vector<int64_t> moe_num_experts_per_layer;

  bool is_moe_layer(int64_t layer) const {
    return moe_layer_pattern.empty() || moe_layer_pattern[static_cast<size_t>(layer)] != 0;
  }
  int64_t experts_of_layer(int64_t layer) const {
    return moe_num_experts_per_layer.empty()
               ? num_local_experts
               : moe_num_experts_per_layer[static_cast<size_t>(layer)];
  }
  // Not in MixtralConfig: the router family (moe/router_options.h) and the
  // balancing loss, with Megatron-Core's flag names. The defaults are
  // Mixtral's router and Hugging Face's aux loss.
  std::string moe_router_score_function = "softmax";  // or "sigmoid"
  bool moe_router_pre_softmax = false;
  double moe_router_topp = 0.0;  // 0 = top-k routing
  int64_t moe_router_topp_max_experts = 0;
  double moe_router_topp_entropy_coeff = 0.0;
  int64_t moe_router_num_groups = 0;
  int64_t moe_router_group_topk = 0;
  bool moe_router_enable_expert_bias = false;
  double moe_router_bias_update_rate = 1e-3;
  // hf_aux_loss (Hugging Face's, pooled over layers: the default, for
  // parity), aux_loss / seq_aux_loss / global_aux_loss (Megatron-Core's, per
  // layer), or none.
  std::string moe_router_load_balancing_type = "hf_aux_loss";
  bool tie_word_embeddings = false;

  int64_t resolved_head_dim() const {
    return head_dim > 0 ? head_dim : hidden_size / num_attention_heads;
  }

  // Checks every field before anything is allocated; the message names the
  // field, the rule and a fix.
  absl::Status Validate() const;

  // Reads a Hugging Face config.json object as transformers 4 and 5 write it
  // (rope_theta at top level or inside rope_parameters; null head_dim and
  // num_key_value_heads). Unsupported features (tied embeddings, sliding
  // window, an activation other than silu) are errors, never ignored.
  static absl::StatusOr<ModelConfig> FromHfJson(const Json& json);
  static absl::StatusOr<ModelConfig> FromHfFile(const std::string& path);
  // A config.json that MixtralForCausalLM.from_pretrained accepts.
  Json ToHfJson() const;
  // Every field: ToHfJson plus our moe_* extensions (which FromHfJson reads
  // back when present), for our own checkpoints.
  Json ToJson() const;
  // Whether MixtralForCausalLM can hold this model (no shared expert, no
  // Residual-MoE); the message names the field when not.
  absl::Status CheckHfExportable() const;
};

// The router options of `config` (its moe_router_* fields); fails on an
// unknown score function name.
absl::StatusOr<RouterOptions> RouterOptionsOf(const ModelConfig& config);

}  // namespace moe

#endif  // MOE_MODEL_CONFIG_H_
