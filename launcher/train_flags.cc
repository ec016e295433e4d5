#include "launcher/train_flags.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

// Model shape (Megatron-LM names; the Hugging Face field in parentheses).
ABSL_FLAG(int64_t, num_layers, 0, "Transformer layers (num_hidden_layers). Required.");
ABSL_FLAG(int64_t, hidden_size, 0, "Model width (hidden_size). Required.");
ABSL_FLAG(int64_t, ffn_hidden_size, 0,
          "Width of one expert's SwiGLU (intermediate_size); 0 = 4 * --hidden_size.");
ABSL_FLAG(int64_t, num_attention_heads, 0, "Query heads (num_attention_heads). Required.");
ABSL_FLAG(int64_t, num_query_groups, 0,
          "Key/value heads of grouped-query attention (num_key_value_heads); 0 = one per head.");
ABSL_FLAG(int64_t, kv_channels, 0,
          "Head dimension (head_dim); 0 = --hidden_size / --num_attention_heads.");
ABSL_FLAG(std::string, num_experts, "8",
          "Experts per MoE layer (num_local_experts), or one count per layer for a PR-MoE "
          "pyramid, e.g. 8,8,16,16.");
ABSL_FLAG(std::string, moe_layer_freq, "1",
          "Which layers are MoE: N = every N-th layer from layer 0 (1 = all), or one 0/1 per "
          "layer, e.g. 1,0,1,0 (the others are dense SwiGLU MLPs).");
ABSL_FLAG(int64_t, moe_router_topk, 2, "Experts each token is routed to (num_experts_per_tok).");
ABSL_FLAG(double, moe_aux_loss_coeff, 0.0,
          "Load-balancing loss coefficient (router_aux_loss_coef); 0 = off.");
ABSL_FLAG(double, moe_z_loss_coeff, 0.0, "Router z-loss coefficient; 0 = off.");
ABSL_FLAG(std::string, moe_router_score_function, "softmax",
          "Router scores: softmax (Mixtral) or sigmoid (DeepSeek-V3).");
ABSL_FLAG(bool, moe_router_pre_softmax, false,
          "Softmax over all experts, then top-k, without renormalising the k weights.");
ABSL_FLAG(double, moe_router_topp, 0.0,
          "Top-p dynamic routing: each token takes the fewest experts whose probabilities "
          "reach P (weights not renormalised); 0 = top-k routing.");
ABSL_FLAG(int64_t, moe_router_topp_max_experts, 0,
          "Top-p: at most this many experts per token; 0 = no cap.");
ABSL_FLAG(double, moe_router_topp_entropy_coeff, 0.0,
          "Top-p: coefficient of the router entropy loss; 0 = off.");
ABSL_FLAG(int64_t, moe_router_num_groups, 0,
          "Group-limited routing: experts in this many groups; 0 = off.");
ABSL_FLAG(int64_t, moe_router_group_topk, 0,
          "Group-limited routing: tokens choose experts within this many groups.");
ABSL_FLAG(bool, moe_router_enable_expert_bias, false,
          "Aux-loss-free balancing: a per-expert selection bias updated once per global batch "
          "(needs --moe_router_score_function=sigmoid).");
ABSL_FLAG(double, moe_router_bias_update_rate, 1e-3, "Step of the expert bias update.");
ABSL_FLAG(std::string, moe_router_load_balancing_type, "hf_aux_loss",
          "hf_aux_loss (Hugging Face's, pooled over layers), aux_loss, seq_aux_loss, "
          "global_aux_loss (Megatron-Core's, per layer) or none.");
ABSL_FLAG(int64_t, moe_shared_expert_intermediate_size, 0,
          "Width of an always-on shared expert added to the routed output; 0 = none.");
ABSL_FLAG(bool, moe_use_residual, false,
          "Residual-MoE (DeepSpeed-MoE): a dense MLP beside the experts, mixed by a learned "
          "2-way softmax.");
ABSL_FLAG(std::string, moe_token_dispatcher_type, "alltoall",
          "How tokens reach experts on other ranks: alltoall or allgather.");
ABSL_FLAG(double, moe_expert_capacity_factor, 0.0,
          "Expert capacity = ceil(local tokens * topk / experts * factor); pairs beyond it are "
          "dropped. 0 = dropless.");
ABSL_FLAG(std::string, moe_token_drop_policy, "probs",
          "Which pairs an expert over capacity keeps: probs (highest weight) or position "
          "(first in token order).");
ABSL_FLAG(bool, moe_pad_expert_input_to_capacity, false,
          "Pad every expert's input to exactly its capacity (static shapes; needs "
          "--moe_expert_capacity_factor and the alltoall dispatcher).");
ABSL_FLAG(int64_t, vocab_size, 0,
          "Vocabulary size; must cover every token id of the data (257 for the byte "
          "tokenizer). Required.");
ABSL_FLAG(int64_t, seq_length, 0, "Tokens per training sample. Required.");
ABSL_FLAG(int64_t, max_position_embeddings, 0,
          "Longest sequence the model is built for; 0 = --seq_length.");
ABSL_FLAG(double, rotary_base, 1e6, "RoPE base (rope_theta); Mixtral uses 1e6.");
ABSL_FLAG(double, norm_epsilon, 1e-5, "RMSNorm epsilon (rms_norm_eps).");
ABSL_FLAG(double, init_method_std, 0.02, "Std of the normal weight init (initializer_range).");

// Batches and steps.
ABSL_FLAG(int64_t, micro_batch_size, 1, "Samples per forward/backward pass.");
ABSL_FLAG(int64_t, global_batch_size, 0,
          "Samples per optimizer step (a multiple of --micro_batch_size); 0 = "
          "--micro_batch_size.");
ABSL_FLAG(int64_t, train_iters, 0, "Optimizer steps to run. Required.");

// Optimizer and schedule.
ABSL_FLAG(double, lr, 0.0, "Peak learning rate. Required.");
ABSL_FLAG(double, min_lr, 0.0, "Learning rate at the end of the decay.");
ABSL_FLAG(double, lr_warmup_init, 0.0, "Learning rate at the start of the warmup.");
ABSL_FLAG(int64_t, lr_warmup_iters, 0, "Linear warmup steps.");
ABSL_FLAG(int64_t, lr_decay_iters, 0, "Steps over which the rate decays; 0 = --train_iters.");
ABSL_FLAG(std::string, lr_decay_style, "cosine",
          "constant, linear, cosine or inverse-square-root.");
ABSL_FLAG(double, weight_decay, 0.01, "AdamW decoupled weight decay (not on norms).");
ABSL_FLAG(double, adam_beta1, 0.9, "AdamW beta1.");
ABSL_FLAG(double, adam_beta2, 0.999, "AdamW beta2.");
ABSL_FLAG(double, adam_eps, 1e-8, "AdamW epsilon.");
ABSL_FLAG(double, clip_grad, 1.0, "Clip the global gradient norm to this; 0 = no clipping.");
ABSL_FLAG(uint64_t, seed, 1234, "Seed of the weights and of the data order.");

// Data, validation, logging, threads.
ABSL_FLAG(std::string, data_path, "",
          "Prefix of the training data (P.bin + P.idx, Megatron format). Required.");
ABSL_FLAG(std::string, valid_data_path, "",
          "Prefix of the validation data; empty = no validation.");
ABSL_FLAG(int64_t, eval_interval, 1000, "Validate every this many steps (and after the last).");
ABSL_FLAG(int64_t, eval_iters, 100, "Global batches of validation data per validation.");
ABSL_FLAG(int64_t, log_interval, 100, "Print a step line every this many steps.");
ABSL_FLAG(std::string, log_jsonl, "",
          "Append one JSON object per step to this file; empty = no file.");
// Parallel layout (Megatron-LM names). DP = world size / (TP * CP * PP).
ABSL_FLAG(int32_t, tensor_model_parallel_size, 1, "Tensor-parallel ranks (TP).");
ABSL_FLAG(int32_t, context_parallel_size, 1, "Context-parallel ranks (CP).");
ABSL_FLAG(int32_t, pipeline_model_parallel_size, 1, "Pipeline stages (PP).");
ABSL_FLAG(int32_t, expert_model_parallel_size, 1, "Expert-parallel ranks of the MoE layers (EP).");
ABSL_FLAG(int32_t, expert_tensor_parallel_size, 1, "Tensor-parallel ranks of each expert (ETP).");
ABSL_FLAG(bool, sequence_parallel, false,
          "Sequence parallelism in the tensor-parallel regions (needs TP > 1).");
ABSL_FLAG(bool, use_distributed_optimizer, false,
          "Shard AdamW's state and fp32 master weights over the data-parallel ranks (ZeRO-1).");
ABSL_FLAG(int64_t, ddp_bucket_size, 0,
          "Elements per data-parallel gradient bucket; 0 = max(40M, 1M * DP) (Megatron).");
// A simulated network (parallel/simulated_network.h) for studying overlap and
// scaling on one machine; not a Megatron-LM flag.
ABSL_FLAG(double, sim_latency_us, 0.0,
          "Simulated network: latency alpha in microseconds added to every collective and "
          "send/recv of a group of 2+ ranks; 0 = none. Either sim flag > 0 turns the model on.");
ABSL_FLAG(
    double, sim_bandwidth_gbps, 0.0,
    "Simulated network: link bandwidth beta in gigaBITS per second (1e9 bit/s; 10 = "
    "10 Gbit/s Ethernet = 1.25 GB/s); 0 = unlimited. Either sim flag > 0 turns the model on.");
ABSL_FLAG(bool, print_grid, false,
          "Print the rank grid (every rank's coordinates and groups) and exit.");

ABSL_FLAG(int32_t, threads, 0,
          "OpenMP threads; 0 = OpenMP's default (OMP_NUM_THREADS, else every core).");

// Checkpoints (launcher/checkpoint.h; Megatron-LM names, --save_keep is ours).
ABSL_FLAG(std::string, save, "",
          "Checkpoint directory: DIR/iter_NNNNNNN per save and DIR/latest naming the newest; "
          "saved every --save_interval steps, after the last step and on SIGTERM/SIGINT.");
ABSL_FLAG(int64_t, save_interval, 0,
          "Save every this many steps; 0 = only at the end and on stop.");
ABSL_FLAG(int32_t, save_keep, 2, "Keep the newest this many checkpoints in --save; 0 = keep all.");
ABSL_FLAG(std::string, load, "",
          "Resume from this checkpoint: a --save directory (its latest) or one iter_* directory "
          "in it. Weights, optimizer state, step and data position; any parallel layout.");
ABSL_FLAG(std::string, init_from_hf, "",
          "Start from the weights of this Hugging Face Mixtral folder (config.json + "
          "model.safetensors) instead of a random init; its config must match the model flags.");
ABSL_FLAG(int64_t, exit_interval, 0,
          "Stop (saving first, with --save) after the step divisible by this; 0 = never.");

// Prometheus metrics (launcher/train_metrics.h); not Megatron-LM flags.
ABSL_FLAG(int32_t, metrics_port, 0,
          "Serve Prometheus metrics over HTTP: rank r on this port + r (rank 0 has the job's "
          "series); 0 = off.");
ABSL_FLAG(double, metrics_linger_s, 0.0,
          "Keep serving metrics this many seconds after the last step, so that Prometheus "
          "scrapes the final values.");
ABSL_FLAG(double, mfu_peak_tflops, 0.0,
          "Peak TFLOP/s of one rank's device, for the moe_train_mfu_ratio metric (e.g. 989 for "
          "an H100's dense bf16); 0 = no MFU metric.");

namespace moe {
namespace {

// One row per model flag ties it to its ModelConfig field: the rows convert
// the flags and translate ModelConfig::Validate's messages back to flag names.
template <typename T>
struct ModelFlag {
  absl::Flag<T>* flag;
  T ModelConfig::*field;
  absl::string_view field_name;  // as ModelConfig::Validate (and config.json) spell it
  absl::string_view fix;         // appended to an error that names this field and gives no fix
};

const ModelFlag<int64_t> kModelIntFlags[] = {
    {&FLAGS_num_layers, &ModelConfig::num_hidden_layers, "num_hidden_layers",
     "e.g. --num_layers=2"},
    {&FLAGS_hidden_size, &ModelConfig::hidden_size, "hidden_size", "e.g. --hidden_size=128"},
    {&FLAGS_ffn_hidden_size, &ModelConfig::intermediate_size, "intermediate_size",
     "set it > 0, or 0 for 4 * --hidden_size"},
    {&FLAGS_num_attention_heads, &ModelConfig::num_attention_heads, "num_attention_heads",
     "e.g. --num_attention_heads=4"},
    {&FLAGS_num_query_groups, &ModelConfig::num_key_value_heads, "num_key_value_heads",
     "choose a divisor of --num_attention_heads (0 = one group per head)"},
    {&FLAGS_kv_channels, &ModelConfig::head_dim, "head_dim",
     "set an even value, or 0 for --hidden_size / --num_attention_heads"},
    {&FLAGS_moe_router_topk, &ModelConfig::num_experts_per_tok, "num_experts_per_tok",
     "choose 1 <= --moe_router_topk <= --num_experts"},
    {&FLAGS_vocab_size, &ModelConfig::vocab_size, "vocab_size",
     "use the tokenizer's size (257 for the byte tokenizer, 32000 for Mixtral's)"},
    {&FLAGS_moe_shared_expert_intermediate_size, &ModelConfig::moe_shared_expert_intermediate_size,
     "moe_shared_expert_intermediate_size", "e.g. the expert width, or 0 for none"},
    {&FLAGS_moe_router_topp_max_experts, &ModelConfig::moe_router_topp_max_experts,
     "moe_router_topp_max_experts", "e.g. 4, or 0 for no cap"},
    {&FLAGS_moe_router_num_groups, &ModelConfig::moe_router_num_groups, "moe_router_num_groups",
     "choose a divisor of --num_experts, or 0 for no groups"},
    {&FLAGS_moe_router_group_topk, &ModelConfig::moe_router_group_topk, "moe_router_group_topk",
     "choose 1 <= it <= --moe_router_num_groups"},
    {&FLAGS_max_position_embeddings, &ModelConfig::max_position_embeddings,
     "max_position_embeddings", "set it >= --seq_length, or 0 for --seq_length"},
};
const ModelFlag<double> kModelDoubleFlags[] = {
    {&FLAGS_rotary_base, &ModelConfig::rope_theta, "rope_theta", "Mixtral uses 1e6"},
    {&FLAGS_norm_epsilon, &ModelConfig::rms_norm_eps, "rms_norm_eps", "Mixtral uses 1e-5"},
    {&FLAGS_moe_aux_loss_coeff, &ModelConfig::router_aux_loss_coef, "router_aux_loss_coef",
     "use 0 to turn it off (Megatron's Mixtral recipes use 1e-2)"},
    {&FLAGS_moe_z_loss_coeff, &ModelConfig::router_z_loss_coef, "router_z_loss_coef",
     "use 0 to turn it off (ST-MoE uses 1e-3)"},
    {&FLAGS_moe_router_topp, &ModelConfig::moe_router_topp, "moe_router_topp",
     "e.g. --moe_router_topp=0.4, or 0 for top-k routing"},
    {&FLAGS_moe_router_topp_entropy_coeff, &ModelConfig::moe_router_topp_entropy_coeff,
     "moe_router_topp_entropy_coeff", "e.g. 1e-4, or 0 for none"},
    {&FLAGS_moe_router_bias_update_rate, &ModelConfig::moe_router_bias_update_rate,
     "moe_router_bias_update_rate", "e.g. 1e-3"},
    {&FLAGS_moe_expert_capacity_factor, &ModelConfig::moe_expert_capacity_factor,
     "moe_expert_capacity_factor", "e.g. --moe_expert_capacity_factor=1.25, or 0 for dropless"},
    {&FLAGS_init_method_std, &ModelConfig::initializer_range, "initializer_range",
     "e.g. --init_method_std=0.02"},
};

// A comma-separated list of integers, with optional [ ].
absl::StatusOr<std::vector<int64_t>> ParseIntList(const char* flag, std::string text) {
  absl::string_view view = absl::StripAsciiWhitespace(text);
  absl::ConsumePrefix(&view, "[");
  absl::ConsumeSuffix(&view, "]");
  std::vector<int64_t> values;
  for (absl::string_view item : absl::StrSplit(view, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &v)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", flag, "=", text, ": expected an integer or a comma-separated list of integers"));
    }
    values.push_back(v);
  }
  return values;
}

// --num_experts (N or a per-layer list) and --moe_layer_freq (N or a 0/1
// list) into the config; the list lengths are checked by Validate.
absl::Status ParseExpertLayout(const std::string& experts, const std::string& freq,
                               ModelConfig* c) {
  absl::StatusOr<std::vector<int64_t>> e = ParseIntList("num_experts", experts);
  if (!e.ok()) return e.status();
  if (e->size() == 1) {
    c->num_local_experts = (*e)[0];
  } else {
    c->num_local_experts = *std::max_element(e->begin(), e->end());
    c->moe_num_experts_per_layer = *e;
  }
  absl::StatusOr<std::vector<int64_t>> f = ParseIntList("moe_layer_freq", freq);
  if (!f.ok()) return f.status();
  if (f->size() == 1) {
    if ((*f)[0] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--moe_layer_freq must be >= 1 (every N-th layer is MoE) or a "
                       "0/1 list, got ",
                       (*f)[0]));
    }
    if ((*f)[0] > 1) {
      for (int64_t i = 0; i < c->num_hidden_layers; ++i) {
        c->moe_layer_pattern.push_back(i % (*f)[0] == 0 ? 1 : 0);
      }
    }
  } else {
    c->moe_layer_pattern.assign(f->begin(), f->end());
  }
  return absl::OkStatus();
}

// A field as a validator names it, and the flag that sets it.
struct FieldName {
  absl::string_view field;
  absl::string_view flag;  // without the dashes
  absl::string_view fix;
};

// LrSchedule::Options and AdamW::Options fields, as their validators name them.
constexpr FieldName kOptimizerFields[] = {
    // --lr itself is checked first (positive, finite): only the relation to
    // --min_lr is left for LrSchedule::Validate to name it in.
    {"max_lr", "lr", "keep 0 <= --min_lr <= --lr"},
    {"min_lr", "min_lr", "keep 0 <= --min_lr <= --lr"},
    {"warmup_init_lr", "lr_warmup_init", "keep 0 <= --lr_warmup_init <= --lr"},
    {"warmup_iters", "lr_warmup_iters",
     "keep --lr_warmup_iters below --lr_decay_iters (which defaults to --train_iters)"},
    {"decay_iters", "lr_decay_iters", "set it > --lr_warmup_iters, or 0 for --train_iters"},
    {"lr_decay_style", "lr_decay_style", ""},
    {"beta1", "adam_beta1", "e.g. --adam_beta1=0.9"},
    {"beta2", "adam_beta2", "e.g. --adam_beta2=0.95"},
    {"eps", "adam_eps", "e.g. --adam_eps=1e-8"},
    {"weight_decay", "weight_decay", "e.g. --weight_decay=0.1, or 0 for none"},
};

// Model config fields set by flags of the same name outside the tables above.
constexpr FieldName kMoeFields[] = {
    {"num_local_experts", "num_experts", "e.g. --num_experts=8"},
    {"moe_num_experts_per_layer", "num_experts", "give one count per layer, e.g. 8,8,16,16"},
    {"moe_layer_pattern", "moe_layer_freq", "give one 0/1 per layer, e.g. 1,0,1,0"},
    {"moe_router_load_balancing_type", "moe_router_load_balancing_type",
     "use hf_aux_loss, aux_loss, seq_aux_loss, global_aux_loss or none"},
    {"moe_router_score_function", "moe_router_score_function", "use softmax or sigmoid"},
    {"moe_token_drop_policy", "moe_token_drop_policy", "use probs or position"},
    {"moe_pad_expert_input_to_capacity", "moe_pad_expert_input_to_capacity",
     "set --moe_expert_capacity_factor too, or drop the flag"},
};

std::vector<FieldName> AllFieldNames() {
  std::vector<FieldName> names;
  for (const auto& f : kModelIntFlags) {
    names.push_back({f.field_name, absl::GetFlagReflectionHandle(*f.flag).Name(), f.fix});
  }
  for (const auto& f : kModelDoubleFlags) {
    names.push_back({f.field_name, absl::GetFlagReflectionHandle(*f.flag).Name(), f.fix});
  }
  for (const FieldName& name : kOptimizerFields) names.push_back(name);
  for (const FieldName& name : kMoeFields) names.push_back(name);
  return names;
}

// Rewrites a validator's message in flag terms: drops its "model config: " /
// "lr schedule: " / "AdamW: " prefix, turns every field name into its
// --flag, and appends the fix of the first flag named when the message
// offers none (no "; ").
absl::Status InFlagTerms(const absl::Status& status) {
  if (status.ok()) return status;
  absl::string_view message = status.message();
  for (absl::string_view prefix : {"model config: ", "lr schedule: ", "AdamW: "}) {
    if (absl::ConsumePrefix(&message, prefix)) break;
  }
  const std::vector<FieldName> names = AllFieldNames();
  std::string out;
  absl::string_view fix;
  size_t i = 0;
  while (i < message.size()) {
    const auto is_word = [&](size_t k) {
      return std::isalnum(static_cast<unsigned char>(message[k])) || message[k] == '_';
    };
    if (!is_word(i)) {
      out += message[i++];
      continue;
    }
    size_t end = i;
    while (end < message.size() && is_word(end)) ++end;
    const absl::string_view word = message.substr(i, end - i);
    const FieldName* match = nullptr;
    for (const FieldName& name : names) {
      if (name.field == word) match = &name;
    }
    // A word the message already spells as a flag ("--name") stays as it is.
    const bool already_flag = i >= 2 && message.substr(i - 2, 2) == "--";
    if (match != nullptr && already_flag) {
      absl::StrAppend(&out, match->flag);
      if (fix.empty()) fix = match->fix;
    } else if (match != nullptr) {
      absl::StrAppend(&out, "--", match->flag);
      if (fix.empty()) fix = match->fix;
    } else {
      absl::StrAppend(&out, word);
    }
    i = end;
  }
  if (!absl::StrContains(out, "; ") && !fix.empty()) absl::StrAppend(&out, "; ", fix);
  return absl::InvalidArgumentError(out);
}

absl::Status Invalid(absl::string_view message) { return absl::InvalidArgumentError(message); }

absl::Status RequirePositive(absl::string_view flag, int64_t value, absl::string_view example) {
  if (value > 0) return absl::OkStatus();
  return Invalid(
      absl::StrCat("--", flag, " must be positive, got ", value, "; e.g. --", flag, "=", example));
}

}  // namespace

absl::Status ValidateTrainerOptions(const TrainerOptions& o) {
  // Before the model: --max_position_embeddings defaults to it.
  if (absl::Status s = RequirePositive("seq_length", o.seq_length, "128"); !s.ok()) return s;
  if (absl::Status s = InFlagTerms(o.model.Validate()); !s.ok()) return s;
  if (o.seq_length > o.model.max_position_embeddings) {
    return Invalid(absl::StrCat("--seq_length (", o.seq_length,
                                ") exceeds --max_position_embeddings (",
                                o.model.max_position_embeddings,
                                "); lower --seq_length or raise --max_position_embeddings"));
  }
  if (absl::Status s = RequirePositive("micro_batch_size", o.micro_batch_size, "8"); !s.ok()) {
    return s;
  }
  if (absl::Status s = RequirePositive("global_batch_size", o.global_batch_size, "16"); !s.ok()) {
    return s;
  }
  if (o.global_batch_size % o.micro_batch_size != 0) {
    const int64_t up = (o.global_batch_size / o.micro_batch_size + 1) * o.micro_batch_size;
    return Invalid(absl::StrCat("--global_batch_size (", o.global_batch_size,
                                ") must be a multiple of --micro_batch_size (", o.micro_batch_size,
                                "); e.g. --global_batch_size=", up));
  }
  if (absl::Status s = RequirePositive("train_iters", o.train_iters, "300"); !s.ok()) return s;
  if (!(o.lr.max_lr > 0) || !std::isfinite(o.lr.max_lr)) {
    return Invalid(
        absl::StrCat("--lr must be a positive number, got ", o.lr.max_lr, "; e.g. --lr=1e-3"));
  }
  if (absl::Status s = InFlagTerms(LrSchedule::Validate(o.lr)); !s.ok()) return s;
  if (absl::Status s = InFlagTerms(AdamW::Validate(o.adam)); !s.ok()) return s;
  if (!(o.clip_grad >= 0) || !std::isfinite(o.clip_grad)) {
    return Invalid(absl::StrCat("--clip_grad must be >= 0, got ", o.clip_grad,
                                "; e.g. --clip_grad=1.0, or 0 for no clipping"));
  }
  if (o.data_path.empty()) {
    return Invalid(
        "--data_path is required: the prefix of the training .bin/.idx; e.g. "
        "--data_path=data/corpus_train_text_document (examples/data/make_dataset.sh builds it)");
  }
  if (absl::Status s = RequirePositive("eval_interval", o.eval_interval, "50"); !s.ok()) return s;
  if (absl::Status s = RequirePositive("eval_iters", o.eval_iters, "10"); !s.ok()) return s;
  if (absl::Status s = RequirePositive("log_interval", o.log_interval, "10"); !s.ok()) return s;
  for (auto [flag, size] : {std::pair{"tensor_model_parallel_size", o.parallel.tp},
                            std::pair{"context_parallel_size", o.parallel.cp},
                            std::pair{"pipeline_model_parallel_size", o.parallel.pp},
                            std::pair{"expert_model_parallel_size", o.parallel.ep},
                            std::pair{"expert_tensor_parallel_size", o.parallel.etp}}) {
    if (absl::Status s = RequirePositive(flag, size, "1"); !s.ok()) return s;
  }
  if (o.ddp_bucket_size < 0) {
    return Invalid(absl::StrCat("--ddp_bucket_size must be >= 0, got ", o.ddp_bucket_size,
                                "; e.g. --ddp_bucket_size=40000000, or 0 for Megatron's default"));
  }
  // The options hold GB/s; the flag (and so its message) is in Gbit/s.
  for (auto [flag, value, example] :
       {std::tuple{"sim_latency_us", o.sim_network.latency_us, "=10, or 0 for none"},
        std::tuple{"sim_bandwidth_gbps", 8 * o.sim_network.bandwidth_gb_per_s,
                   "=10 (Gbit/s), or 0 for unlimited"}}) {
    if (!(value >= 0) || !std::isfinite(value)) {
      return Invalid(absl::StrCat("--", flag, " must be a finite number >= 0, got ", value,
                                  "; e.g. --", flag, example));
    }
  }
  for (auto [flag, value, example] :
       {std::tuple{"save_interval", o.save_interval, "=1000, or 0 for no periodic saves"},
        std::tuple{"save_keep", int64_t{o.save_keep}, "=2, or 0 to keep every checkpoint"},
        std::tuple{"exit_interval", o.exit_interval, "=1000, or 0 to never stop early"}}) {
    if (value < 0) {
      return Invalid(
          absl::StrCat("--", flag, " must be >= 0, got ", value, "; e.g. --", flag, example));
    }
  }
  if (o.save_interval > 0 && o.save.empty()) {
    return Invalid(absl::StrCat("--save_interval=", o.save_interval,
                                " needs --save=DIR, the directory to save checkpoints in"));
  }
  if (o.max_nonfinite_steps < 1) {
    return Invalid(
        absl::StrCat("max_nonfinite_steps must be positive, got ", o.max_nonfinite_steps));
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainSettings> TrainSettingsFromFlags() {
  TrainSettings settings;
  TrainerOptions& o = settings.trainer;
  ModelConfig& c = o.model;
  for (const auto& f : kModelIntFlags) c.*f.field = absl::GetFlag(*f.flag);
  for (const auto& f : kModelDoubleFlags) c.*f.field = absl::GetFlag(*f.flag);
  c.tie_word_embeddings = false;
  c.moe_token_drop_policy = absl::GetFlag(FLAGS_moe_token_drop_policy);
  if (absl::Status s = ParseExpertLayout(absl::GetFlag(FLAGS_num_experts),
                                         absl::GetFlag(FLAGS_moe_layer_freq), &c);
      !s.ok()) {
    return s;
  }
  c.moe_router_score_function = absl::GetFlag(FLAGS_moe_router_score_function);
  c.moe_use_residual = absl::GetFlag(FLAGS_moe_use_residual);
  c.moe_router_pre_softmax = absl::GetFlag(FLAGS_moe_router_pre_softmax);
  c.moe_router_enable_expert_bias = absl::GetFlag(FLAGS_moe_router_enable_expert_bias);
  c.moe_router_load_balancing_type = absl::GetFlag(FLAGS_moe_router_load_balancing_type);
  c.moe_pad_expert_input_to_capacity = absl::GetFlag(FLAGS_moe_pad_expert_input_to_capacity);
  o.seq_length = absl::GetFlag(FLAGS_seq_length);
  // Defaults that follow other flags, as in Megatron-LM.
  if (c.num_key_value_heads == 0) c.num_key_value_heads = c.num_attention_heads;
  if (c.intermediate_size == 0) c.intermediate_size = 4 * c.hidden_size;
  if (c.max_position_embeddings == 0) c.max_position_embeddings = o.seq_length;

  o.micro_batch_size = absl::GetFlag(FLAGS_micro_batch_size);
  o.global_batch_size = absl::GetFlag(FLAGS_global_batch_size);
  if (o.global_batch_size == 0) o.global_batch_size = o.micro_batch_size;
  o.train_iters = absl::GetFlag(FLAGS_train_iters);

  o.lr.max_lr = absl::GetFlag(FLAGS_lr);
  o.lr.min_lr = absl::GetFlag(FLAGS_min_lr);
  o.lr.warmup_init_lr = absl::GetFlag(FLAGS_lr_warmup_init);
  o.lr.warmup_iters = absl::GetFlag(FLAGS_lr_warmup_iters);
  o.lr.decay_iters = absl::GetFlag(FLAGS_lr_decay_iters);
  if (o.lr.decay_iters == 0) o.lr.decay_iters = o.train_iters;
  absl::StatusOr<LrDecayStyle> style = ParseLrDecayStyle(absl::GetFlag(FLAGS_lr_decay_style));
  if (!style.ok()) return InFlagTerms(style.status());
  o.lr.decay_style = *style;

  o.adam.beta1 = absl::GetFlag(FLAGS_adam_beta1);
  o.adam.beta2 = absl::GetFlag(FLAGS_adam_beta2);
  o.adam.eps = absl::GetFlag(FLAGS_adam_eps);
  o.adam.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.clip_grad = absl::GetFlag(FLAGS_clip_grad);
  o.seed = absl::GetFlag(FLAGS_seed);

  o.data_path = absl::GetFlag(FLAGS_data_path);
  o.valid_data_path = absl::GetFlag(FLAGS_valid_data_path);
  o.eval_interval = absl::GetFlag(FLAGS_eval_interval);
  o.eval_iters = absl::GetFlag(FLAGS_eval_iters);
  o.log_interval = absl::GetFlag(FLAGS_log_interval);
  o.parallel.tp = absl::GetFlag(FLAGS_tensor_model_parallel_size);
  o.parallel.cp = absl::GetFlag(FLAGS_context_parallel_size);
  o.parallel.pp = absl::GetFlag(FLAGS_pipeline_model_parallel_size);
  o.parallel.ep = absl::GetFlag(FLAGS_expert_model_parallel_size);
  o.parallel.etp = absl::GetFlag(FLAGS_expert_tensor_parallel_size);
  o.sequence_parallel = absl::GetFlag(FLAGS_sequence_parallel);
  o.use_distributed_optimizer = absl::GetFlag(FLAGS_use_distributed_optimizer);
  absl::StatusOr<DispatcherType> dispatcher =
      ParseDispatcherType(absl::GetFlag(FLAGS_moe_token_dispatcher_type));
  if (!dispatcher.ok()) return Invalid(std::string(dispatcher.status().message()));
  o.moe_token_dispatcher_type = *dispatcher;
  o.ddp_bucket_size = absl::GetFlag(FLAGS_ddp_bucket_size);
  o.sim_network.latency_us = absl::GetFlag(FLAGS_sim_latency_us);
  o.sim_network.bandwidth_gb_per_s = absl::GetFlag(FLAGS_sim_bandwidth_gbps) / 8;  // Gbit/s -> GB/s
  o.save = absl::GetFlag(FLAGS_save);
  o.save_interval = absl::GetFlag(FLAGS_save_interval);
  o.save_keep = absl::GetFlag(FLAGS_save_keep);
  o.exit_interval = absl::GetFlag(FLAGS_exit_interval);
  if (absl::Status s = ValidateTrainerOptions(o); !s.ok()) return s;

  settings.threads = absl::GetFlag(FLAGS_threads);
  if (settings.threads < 0) {
    return Invalid(absl::StrCat("--threads must be >= 0, got ", settings.threads,
                                "; e.g. --threads=2, or 0 for every core"));
  }
  settings.log_jsonl = absl::GetFlag(FLAGS_log_jsonl);
  settings.print_grid = absl::GetFlag(FLAGS_print_grid);
  settings.load = absl::GetFlag(FLAGS_load);
  settings.init_from_hf = absl::GetFlag(FLAGS_init_from_hf);
  if (!settings.load.empty() && !settings.init_from_hf.empty()) {
    return Invalid(
        "--load and --init_from_hf both set; pass one: --load resumes a checkpoint (weights, "
        "optimizer, step), --init_from_hf starts at step 0 from Hugging Face weights");
  }
  settings.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (settings.metrics_port < 0 || settings.metrics_port > 65535) {
    return Invalid(
        absl::StrCat("--metrics_port must be a TCP port (1-65535) or 0 for no metrics, "
                     "got ",
                     settings.metrics_port, "; e.g. --metrics_port=9400"));
  }
  settings.metrics_linger_s = absl::GetFlag(FLAGS_metrics_linger_s);
  if (!(settings.metrics_linger_s >= 0)) {
    return Invalid(
        absl::StrCat("--metrics_linger_s must be >= 0 seconds, got ", settings.metrics_linger_s));
  }
  settings.mfu_peak_tflops = absl::GetFlag(FLAGS_mfu_peak_tflops);
  if (!(settings.mfu_peak_tflops >= 0)) {
    return Invalid(absl::StrCat("--mfu_peak_tflops must be >= 0 (0 = no MFU metric), got ",
                                settings.mfu_peak_tflops));
  }
  return settings;
}

void SetTrainUsage() {
  absl::SetProgramUsageMessage(
      "trains a Mixtral-shaped Mixture-of-Experts model on Megatron .bin/.idx data.\n"
      "  moe-train --flagfile=examples/recipes/mixtral-tiny.flags [--flag=value ...]\n"
      "Flags follow Megatron-LM's names with underscores; later flags override a flagfile's.");
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "launcher/");
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace moe
