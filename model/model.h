// The Mixtral model on one rank (Hugging Face MixtralForCausalLM):
//
//   x      = embed_tokens(ids)                         [batch, seq, hidden]
//   x      = layers[i](x)   for i = 0 .. L-1           (model/transformer_block.h)
//   hidden = norm(x)
//   loss   = scales.lm  * sum_t CE(hidden_t lm_head^T, label_t)
//          + scales.aux * router_aux_loss_coef * aux(router stats of ALL layers pooled)
//          + scales.z   * router_z_loss_coef   * sum_i z(layer i)
//
// The LM head is fused with the loss (core/layers/cross_entropy.h): the
// [tokens, vocab] logits never exist during training. The aux loss is Hugging
// Face's load_balancing_loss_func: it pools the statistics of every layer of
// ONE call, so with gradient accumulation it is taken per micro-batch (as in
// Hugging Face and Megatron), unlike the LM loss, which the trainer normalises
// over the whole global batch with scales.lm.
//
// Parameters are named as Hugging Face saves them, in the order
// model.embed_tokens, model.layers.{i}.* (TransformerBlock::Parameters()),
// model.norm, lm_head.
//
// Tensor parallelism (ModelParallel::tensor_parallel(), TP > 1, always with
// sequence parallelism; parallel/tensor_parallel/): the embedding is
// vocab-parallel and leaves each TP rank its sequence shard
// [batch, seq/TP, hidden]; the layers and the final norm run on that shard
// (attention split by heads, the MoE layer on the shard's tokens); the LM
// head is column-parallel (vocab rows) fused with the vocab-parallel
// cross-entropy. Every TP rank gets the same losses: the router statistics
// of each layer are summed over TP before the router losses are taken, so
// the balancing losses see all the tokens of the micro-batch, as on one
// rank. Parameters carry their slice of the whole tensor (Parameter::slice).
#ifndef MOE_MODEL_MODEL_H_
#define MOE_MODEL_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "core/layers/cross_entropy.h"
#include "core/layers/embedding.h"
#include "core/layers/linear.h"
#include "core/layers/rmsnorm.h"
#include "core/layers/rope.h"
#include "model/config.h"
#include "model/model_parallel.h"
#include "model/router_loss.h"
#include "model/transformer_block.h"
#include "parallel/tensor_parallel/column_parallel_linear.h"
#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"
#include "parallel/tensor_parallel/vocab_parallel_embedding.h"

namespace moe {

// Per-micro-batch loss weights. The trainer sets lm = 1 / (non-ignored label
// tokens in the whole global batch) and aux = z = 1 / (micro-batches in the
// global batch), so that gradient accumulation and (later) data parallelism
// never change the math.
struct LossScales {
  double lm = 0;
  double aux = 0;
  double z = 0;
};

struct Losses {
  double lm_loss_sum = 0;   // sum of per-token cross-entropy over non-ignored labels
  int64_t tokens = 0;       // non-ignored labels
  double aux_loss = 0;      // load_balancing_loss_func over all layers (pooled), NOT times coef
  double z_loss = 0;        // sum over layers of mean_t logsumexp(router logits)^2, NOT times coef
  double entropy_loss = 0;  // top-p: sum over layers of the mean router entropy, NOT times coef
  // Per layer, per global expert: this rank's (token, choice) pairs routed to
  // it after dropping, and those dropped at capacity (under TP: the TP
  // group's, the same on each of its ranks, like every field here).
  std::vector<std::vector<double>> expert_tokens;
  std::vector<std::vector<double>> expert_dropped;
  // Per layer, per expert: the picks the router routed (before dropping;
  // RouterStats::routed_counts), for the expert bias.
  std::vector<std::vector<double>> expert_routed;
  // Per layer: the router's mean score entropy over this rank's tokens.
  std::vector<double> router_entropy;
};

// The Philox stream of a parameter: FNV-1a (64-bit) of its Hugging Face
// name, so that its values depend only on (seed, name, element index) and
// never on construction order or on which rank holds which shard.
uint64_t ParameterStream(std::string_view hf_name);

class Model {
 public:
  // Aborts (MOE_CHECK) if config.Validate() fails: callers validate first and
  // report the Status. Weights are left uninitialised (norms at one): call
  // InitializeWeights or load a checkpoint. CPU kF32 or kF64 for now.
  // `parallel`: this rank's place in the layout (its communicators must
  // outlive the model); the default is one rank holding everything.
  Model(const ModelConfig& config, DType dtype = DType::kF32, Device device = Device::kCpu,
        const ModelParallel& parallel = {});
  // Parameters() hands out pointers into the model: it stays where it is.
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // Every element with global index g of a parameter named n gets
  // N(0, initializer_range^2) drawn as Philox(seed, ParameterStream(n)).Normal(g)
  // (core/philox.h), and each parameter is drawn at its Parameter::slice, so
  // a tensor-parallel shard holds exactly its slice of the one-rank weights.
  // Norm weights are set to one.
  void InitializeWeights(uint64_t seed);

  // Every parameter, named with its Hugging Face on-disk name, in the order
  // of the header comment.
  // Under expert parallelism only this rank's experts are listed; under
  // tensor parallelism the split layers list this rank's slices.
  std::vector<Parameter*> Parameters();
  // The routed experts' weights (replicated over expert-data-parallel ranks)
  // and everything else (replicated over data-parallel ranks): their
  // gradients are reduced over different groups.
  std::vector<Parameter*> ExpertParameters();
  std::vector<Parameter*> NonExpertParameters();
  // Under tensor parallelism: the non-expert parameters that every TP rank
  // holds whole (norms, routers, the MoE layer's dense branches). Each rank
  // computes their gradient from its own sequence shard, so the caller sums
  // those over the TP group before any data-parallel reduction (Megatron's
  // finalize_model_grads). Empty with one TP rank.
  std::vector<Parameter*> TpReplicatedParameters();
  // The tensor-parallel group, or null with one TP rank.
  Communicator* tp() const { return tp_; }
  Parameter* FindParameter(std::string_view hf_name);  // nullptr if absent
  // State that is not trained by the optimizer but belongs in a checkpoint:
  // each MoE router's expert bias (--moe_router_enable_expert_bias), named
  // "<router>.expert_bias". Replicated on every rank. Empty when none.
  struct Buffer {
    std::string name;
    Tensor* value;
  };
  std::vector<Buffer> Buffers();
  // Total elements of the whole model (all ranks' experts, whole tensors).
  int64_t NumParameters() const;
  // Per token: every expert's weights counted top_k / num_experts times (for
  // FLOP counts); everything else, embedding included, once.
  int64_t NumActiveParameters() const;

  // One micro-batch. input_ids, labels: kI32 [batch, seq]; a label < 0 is
  // ignored (Hugging Face uses -100). labels[b, s] is the token that position
  // s must predict (already shifted by the caller). Runs forward and
  // backward; parameter grads accumulate (+=) the gradient of the loss of the
  // header comment.
  Losses ForwardBackward(const Tensor& input_ids, const Tensor& labels, const LossScales& scales);
  // The same losses, forward only.
  Losses Evaluate(const Tensor& input_ids, const Tensor& labels);
  // Before the first micro-batch of each global batch (the global-batch aux
  // loss keeps a running mean over micro-batches).
  void StartGlobalBatch() { router_loss_.StartGlobalBatch(); }
  // Aux-loss-free balancing (--moe_router_enable_expert_bias): each layer's
  // router bias moves by `rate` towards balance, from per-layer routed
  // counts summed over the whole global batch and all data-parallel ranks.
  void UpdateExpertBias(const std::vector<std::vector<double>>& routed_counts, double rate);
  // Called by ForwardBackward with each group of parameters whose gradients
  // backward has just finished (the LM head, the final norm, each layer from
  // the last, the embedding), so that a data-parallel reduction can start
  // while the rest of backward runs. Empty (the default): no calls.
  using GradReadyHook = std::function<void(const std::vector<Parameter*>&)>;
  void SetGradReadyHook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  // Forward only: fp32 [batch, seq, vocab] (under TP gathered: the whole
  // logits on every TP rank; collective over the TP group).
  Tensor Logits(const Tensor& input_ids);
  // Forward only: each layer's router logits [batch * seq, num_experts] in
  // the model dtype (Hugging Face's router_logits), e.g. to check routing
  // margins. Under TP gathered over the sequence, like Logits.
  std::vector<Tensor> RouterLogits(const Tensor& input_ids);

 private:
  // What backward needs, per layer call.
  struct Saved {
    Embedding::Saved embed_tokens;
    VocabParallelEmbedding::Saved tp_embed_tokens;  // under TP, instead
    std::vector<TransformerBlock::Saved> layers;
    RmsNorm::Saved norm;
    CrossEntropy::Saved lm_loss;
    VocabParallelCrossEntropy::Saved tp_lm_loss;  // under TP, instead
  };
  // Per-layer router outputs of one forward.
  struct Routing {
    std::vector<RouterStats> stats;
    std::vector<SequenceStats> seq_stats;
    std::vector<Tensor> logits_TE;
    std::vector<std::vector<double>> tokens_E, dropped_E;
  };

  // embed_tokens, layers, norm -> hidden [batch, seq, hidden] (the
  // sequence shard under TP). With saved ==
  // nullptr nothing is kept for backward (each layer's activations are freed
  // as soon as the next layer has run).
  Tensor ForwardHidden(const Tensor& input_ids, Saved* saved, Routing* routing);
  // The LM loss of `hidden` plus the router losses of `routing` (their
  // gradients in *router_losses; training: see RouterLoss::Compute).
  Losses ForwardLoss(const Tensor& input_ids, const Tensor& labels, Saved* saved, Routing* routing,
                     const RouterLossScales& scales, RouterLossResult* router_losses);
  void CheckIds(const char* what, const Tensor& ids) const;
  // Under TP: every layer's router statistics and expert counts summed over
  // the TP group (one all-reduce), so that they cover the whole micro-batch.
  void SumRoutingOverTp(Routing* routing) const;

  ModelConfig config_;
  DType dtype_;
  Device device_;
  Communicator* tp_ = nullptr;        // non-null only with TP > 1
  std::shared_ptr<const Rope> rope_;  // one table for every layer
  // One TP rank: the plain layers; TP > 1: the tp_ ones. Exactly one of each
  // pair is engaged.
  std::optional<Embedding> embed_tokens_;
  std::optional<VocabParallelEmbedding> tp_embed_tokens_;
  std::vector<TransformerBlock> layers_;
  RmsNorm norm_;
  std::optional<Linear> lm_head_;
  std::optional<ColumnParallelLinear> tp_lm_head_;
  // The LM head fused with the loss; reads the LM head's weight.
  std::optional<CrossEntropy> lm_loss_;
  std::optional<VocabParallelCrossEntropy> tp_lm_loss_;
  RouterLoss router_loss_;
  GradReadyHook grad_ready_;
  int64_t num_parameters_ = 0;
  int64_t num_active_parameters_ = 0;
};

}  // namespace moe

#endif  // MOE_MODEL_MODEL_H_
