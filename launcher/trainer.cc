#include "launcher/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/optim/grad_clip.h"
#include "launcher/checkpoint.h"
#include "parallel/local_communicator.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

constexpr const char* kDataFlag = "--data_path";
constexpr const char* kValidFlag = "--valid_data_path";

// Reading every token of a large corpus just to check ids would delay the
// start by minutes; this many tokens from the start of each data set are
// checked up front, and every batch is checked again as it is read.
constexpr int64_t kUpfrontVocabCheckTokens = int64_t{1} << 24;

absl::Status VocabError(const char* flag, const std::string& prefix, int64_t vocab_size,
                        int64_t token, const std::string& where) {
  return absl::InvalidArgumentError(absl::StrCat(
      "--vocab_size=", vocab_size, " does not cover token id ", token, " in ", flag, "=", prefix,
      " (", where, "); set --vocab_size to the tokenizer's vocabulary (at least ", token + 1,
      "; the byte tokenizer's is 257) or rebuild the data with the model's tokenizer"));
}

// Checks the first kUpfrontVocabCheckTokens tokens of `indexed` against the
// vocabulary, reporting the largest id found (the smallest vocabulary that
// would do).
absl::Status CheckVocabUpfront(const char* flag, const IndexedDataset& indexed,
                               int64_t vocab_size) {
  std::vector<int32_t> tokens;
  int64_t checked = 0;
  int32_t max_token = 0;
  for (int64_t seq = 0; seq < indexed.num_sequences() && checked < kUpfrontVocabCheckTokens;
       ++seq) {
    const int64_t length =
        std::min(indexed.sequence_length(seq), kUpfrontVocabCheckTokens - checked);
    tokens.resize(static_cast<size_t>(length));
    if (absl::Status s = indexed.ReadTokens(seq, 0, length, tokens.data()); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, "=", indexed.prefix(), ": ", s.message()));
    }
    for (int32_t token : tokens) {
      if (token < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            flag, "=", indexed.prefix(), ": negative token id ", token, " in sequence ", seq,
            "; the data is damaged: rebuild it with build/bin/moe-preprocess"));
      }
      max_token = std::max(max_token, token);
    }
    checked += length;
  }
  if (max_token >= vocab_size) {
    return VocabError(flag, indexed.prefix(), vocab_size, max_token,
                      absl::StrCat("the largest id of its first ", checked, " tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GptDataset> OpenDataset(const char* flag, const std::string& prefix,
                                       const TrainerOptions& options) {
  const auto fail = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(flag, "=", prefix, ": ", problem));
  };
  absl::StatusOr<IndexedDataset> indexed = IndexedDataset::Open(prefix);
  if (!indexed.ok()) {
    return fail(absl::StrCat(indexed.status().message(),
                             "; build the data with examples/data/make_dataset.sh or "
                             "build/bin/moe-preprocess"));
  }
  if (indexed->total_tokens() < options.seq_length + 1) {
    return fail(absl::StrCat("holds ", indexed->total_tokens(),
                             " tokens, fewer than one sample of --seq_length + 1 = ",
                             options.seq_length + 1, "; use more text or a shorter --seq_length"));
  }
  if (absl::Status s = CheckVocabUpfront(flag, *indexed, options.model.vocab_size); !s.ok()) {
    return s;
  }
  absl::StatusOr<GptDataset> dataset =
      GptDataset::Create(std::make_shared<const IndexedDataset>(std::move(*indexed)),
                         options.seq_length, options.seed);
  if (!dataset.ok()) return fail(dataset.status().message());
  return dataset;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

namespace {

// This rank's group of `kind` (a collective Split over `world`).
std::unique_ptr<Communicator> SplitGroup(Communicator* world, const RankGrid& grid,
                                         GroupKind kind) {
  const SplitColor color = grid.Color(kind, world->rank());
  std::unique_ptr<Communicator> group = world->Split(color.color, color.key);
  MOE_CHECK(group != nullptr && group->size() == grid.GroupSize(kind))
      << "Trainer: the " << GroupKindName(kind) << " group has " << (group ? group->size() : 0)
      << " ranks, the grid says " << grid.GroupSize(kind);
  return group;
}

}  // namespace

absl::StatusOr<RankGrid> BuildRankGrid(const TrainerOptions& options, int world_size) {
  GridRequirements req;
  req.num_attention_heads = options.model.num_attention_heads;
  req.num_query_groups = options.model.num_key_value_heads;
  req.num_experts = options.model.num_local_experts;
  req.ffn_hidden_size = options.model.intermediate_size;
  req.global_batch_size = options.global_batch_size;
  req.micro_batch_size = options.micro_batch_size;
  absl::StatusOr<RankGrid> grid = RankGrid::Create(world_size, options.parallel, &req);
  if (!grid.ok()) return grid;
  const ModelConfig& c = options.model;
  if (c.intermediate_size % options.parallel.etp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ffn_hidden_size=", c.intermediate_size,
                     " cannot be split over --expert_tensor_parallel_size=", options.parallel.etp,
                     "; choose an ETP size that divides the expert width"));
  }
  // PR-MoE: every layer's experts must split over EP, not only the largest count.
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    if (c.is_moe_layer(i) && c.experts_of_layer(i) % options.parallel.ep != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", i, " has ", c.experts_of_layer(i),
          " experts (--num_experts), which --expert_model_parallel_size=", options.parallel.ep,
          " does not divide; give every layer a multiple of the EP size"));
    }
  }
  return grid;
}

absl::Status CheckParallelImplemented(const TrainerOptions& options) {
  const ParallelSizes& p = options.parallel;
  for (auto [flag, size] : {std::pair{"--context_parallel_size", p.cp},
                            std::pair{"--pipeline_model_parallel_size", p.pp}}) {
    if (size != 1) {
      return absl::UnimplementedError(absl::StrCat(
          flag, "=", size,
          ": not implemented yet (issue 5/6); tensor (with sequence), data, expert and "
          "expert-tensor parallelism run today: set it to 1 (--print_grid shows the layout it "
          "would build)"));
    }
  }
  // Megatron-Core asserts the same for MoE: without sequence parallelism
  // every TP rank would route (and send to the experts) the same tokens.
  if (p.tp > 1 && !options.sequence_parallel) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tensor_model_parallel_size=", p.tp,
        " needs --sequence_parallel: in an MoE model each tensor-parallel rank routes its own "
        "slice of the sequence (as Megatron-Core requires); add --sequence_parallel"));
  }
  if (options.sequence_parallel && p.tp == 1) {
    return absl::InvalidArgumentError(
        "--sequence_parallel needs --tensor_model_parallel_size > 1: it splits each sequence "
        "over the tensor-parallel ranks; drop the flag or set --tensor_model_parallel_size");
  }
  if (p.tp > 1) {
    const auto next_multiple = [&](int64_t n) { return (n + p.tp - 1) / p.tp * p.tp; };
    if (options.model.vocab_size % p.tp != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--vocab_size=", options.model.vocab_size,
          " is not divisible by --tensor_model_parallel_size=", p.tp,
          ": each tensor-parallel rank holds an equal slice of the embedding and LM head rows; "
          "pad the vocabulary, e.g. --vocab_size=",
          next_multiple(options.model.vocab_size)));
    }
    if (options.seq_length % p.tp != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--seq_length=", options.seq_length,
          " is not divisible by --tensor_model_parallel_size=", p.tp,
          ": --sequence_parallel gives each tensor-parallel rank an equal slice of every "
          "sequence; e.g. --seq_length=",
          next_multiple(options.seq_length)));
    }
  }
  return absl::OkStatus();
}

int64_t ResolvedBucketElements(const TrainerOptions& options, int dp_size) {
  if (options.ddp_bucket_size > 0) return options.ddp_bucket_size;
  return std::max<int64_t>(40'000'000, int64_t{1'000'000} * dp_size);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TrainerOptions& options,
                                                         Communicator* world) {
  if (absl::Status s = CheckParallelImplemented(options); !s.ok()) return s;
  std::unique_ptr<Communicator> owned_world;
  if (world == nullptr) {
    owned_world = std::make_unique<LocalCommunicator>();
    world = owned_world.get();
  }
  if (SimulatedNetworkOn(options.sim_network)) {
    // The caller keeps `world` alive (an empty-owner alias: not deleted
    // here); a LocalCommunicator made above moves into the wrapper.
    std::shared_ptr<Communicator> inner =
        owned_world != nullptr
            ? std::shared_ptr<Communicator>(std::move(owned_world))
            : std::shared_ptr<Communicator>(std::shared_ptr<Communicator>(), world);
    owned_world = std::make_unique<SimulatedNetwork>(std::move(inner), options.sim_network);
    world = owned_world.get();
  }
  absl::StatusOr<RankGrid> grid = BuildRankGrid(options, world->size());
  if (!grid.ok()) return grid.status();
  absl::StatusOr<GptDataset> train = OpenDataset(kDataFlag, options.data_path, options);
  if (!train.ok()) return train.status();
  std::optional<GptDataset> valid;
  if (!options.valid_data_path.empty()) {
    absl::StatusOr<GptDataset> opened = OpenDataset(kValidFlag, options.valid_data_path, options);
    if (!opened.ok()) return opened.status();
    const int64_t needed = options.eval_iters * options.global_batch_size;
    if (opened->num_samples() < needed) {
      const int64_t fits = opened->num_samples() / options.global_batch_size;
      return absl::InvalidArgumentError(absl::StrCat(
          "--eval_iters=", options.eval_iters, " needs ", needed, " validation samples (",
          options.eval_iters, " x --global_batch_size=", options.global_batch_size, ") but ",
          kValidFlag, "=", options.valid_data_path, " holds ", opened->num_samples(), "; ",
          fits > 0 ? absl::StrCat("lower --eval_iters to at most ", fits)
                   : std::string("lower --global_batch_size"),
          " or use more validation text"));
    }
    valid = std::move(*opened);
  }
  std::unique_ptr<Trainer> trainer(new Trainer(options, std::move(*train), std::move(valid),
                                               std::move(*grid), std::move(owned_world), world));
  if (absl::Status s = trainer->CheckReplicasAgree(); !s.ok()) return s;
  return trainer;
}

Trainer::Trainer(const TrainerOptions& options, GptDataset train, std::optional<GptDataset> valid,
                 RankGrid grid, std::unique_ptr<Communicator> owned_world, Communicator* world)
    : options_(options),
      train_(std::move(train)),
      valid_(std::move(valid)),
      grid_(std::move(grid)),
      owned_world_(std::move(owned_world)),
      world_(world),
      // Every rank splits the same groups in the same order (the grid is the same everywhere).
      tp_(grid_.sizes().tp > 1 ? SplitGroup(world_, grid_, GroupKind::kTp) : nullptr),
      dp_(SplitGroup(world_, grid_, GroupKind::kDp)),
      ep_(grid_.sizes().ep > 1 ? SplitGroup(world_, grid_, GroupKind::kEp) : nullptr),
      etp_(grid_.sizes().etp > 1 ? SplitGroup(world_, grid_, GroupKind::kEtp) : nullptr),
      // The experts form their own group whenever EDP differs from DP.
      edp_(grid_.sizes().ep > 1 || grid_.sizes().tp > 1 || grid_.sizes().etp > 1
               ? SplitGroup(world_, grid_, GroupKind::kEdp)
               : nullptr),
      model_(options.model, DType::kF32, Device::kCpu,
             ModelParallel{.tp = tp_.get(),
                           .sequence_parallel = options.sequence_parallel,
                           .ep = ep_.get(),
                           .etp = etp_.get(),
                           .dp = dp_.get(),
                           .dispatcher = options.moe_token_dispatcher_type}),
      schedule_(options.lr) {
  // The optimizers copy the weights (masters) when built: initialise first.
  model_.InitializeWeights(options.seed);
  const int64_t bucket_bytes = 4 * ResolvedBucketElements(options, dp_->size());
  // With EP > 1 or TP > 1 the experts form their own group, reduced over EDP.
  const std::vector<Parameter*> dense =
      edp_ != nullptr ? model_.NonExpertParameters() : model_.Parameters();
  const std::vector<Parameter*> experts =
      edp_ != nullptr ? model_.ExpertParameters() : std::vector<Parameter*>{};
  if (options.use_distributed_optimizer) {
    dist_optimizer_ =
        std::make_unique<DistributedOptimizer>(dense, dp_.get(), options.adam, bucket_bytes);
    if (!experts.empty()) {
      expert_dist_optimizer_ =
          std::make_unique<DistributedOptimizer>(experts, edp_.get(), options.adam, bucket_bytes);
    }
  } else {
    optimizer_ = std::make_unique<AdamW>(model_.Parameters(), options.adam);
    if (dp_->size() > 1) {
      buckets_ = std::make_unique<GradBuckets>(dense, dp_.get(), bucket_bytes,
                                               GradBuckets::Mode::kAllReduce);
    }
    if (!experts.empty() && edp_->size() > 1) {
      expert_buckets_ = std::make_unique<GradBuckets>(experts, edp_.get(), bucket_bytes,
                                                      GradBuckets::Mode::kAllReduce);
    }
  }
  // Which buckets reduce each parameter's gradient, for the overlap with
  // backward (a parameter with none, e.g. experts without replicas, is left
  // out).
  for (GradBuckets* b :
       {buckets_.get(), expert_buckets_.get(),
        dist_optimizer_ ? &dist_optimizer_->mutable_buckets() : nullptr,
        expert_dist_optimizer_ ? &expert_dist_optimizer_->mutable_buckets() : nullptr}) {
    if (b == nullptr || b->comm()->size() == 1) continue;
    for (const GradBuckets::Bucket& bucket : b->buckets()) {
      for (const GradBuckets::Slot& slot : bucket.slots) bucket_of_[slot.param] = b;
    }
  }
}

void Trainer::SumOverDp(std::vector<double>* values) const {
  Tensor t = Tensor::Empty({static_cast<int64_t>(values->size())}, DType::kF64);
  std::copy(values->begin(), values->end(), t.data<double>());
  dp_->AllReduceSync(t, ReduceOp::kSum);
  std::copy(t.data<double>(), t.data<double>() + values->size(), values->begin());
}

namespace {

// Sums the grads of `params` over `tp` (one all-reduce of a packed buffer).
void SumGradsOverTp(const std::vector<Parameter*>& params, Communicator* tp) {
  int64_t total = 0;
  for (const Parameter* p : params) total += p->grad.numel();
  if (total == 0) return;
  Tensor flat = Tensor::Empty({total}, DType::kF32);
  float* out = flat.data<float>();
  for (const Parameter* p : params) out = std::copy_n(p->grad.data<float>(), p->grad.numel(), out);
  tp->AllReduceSync(flat, ReduceOp::kSum);
  const float* in = flat.data<float>();
  for (Parameter* p : params) {
    std::copy_n(in, p->grad.numel(), p->grad.data<float>());
    in += p->grad.numel();
  }
}

// GradBuckets::OwnedSquaredNorm with each parameter's squares divided by
// the number of TP ranks holding a copy of it (TpCopies), so that the sum
// over the world counts every element of the whole model once.
double TpWeightedOwnedSquares(const GradBuckets& buckets, int tp_size) {
  double total = 0;
  for (size_t b = 0; b < buckets.buckets().size(); ++b) {
    const GradBuckets::Bucket& bucket = buckets.buckets()[b];
    const int64_t begin = buckets.ChunkBegin(b), end = begin + buckets.ChunkSize(b);
    const float* chunk = buckets.mode() == GradBuckets::Mode::kAllReduce
                             ? bucket.flat.data<float>() + begin
                             : bucket.shard.data<float>();
    for (const GradBuckets::Slot& slot : bucket.slots) {
      const int64_t lo = std::max(slot.offset, begin);
      const int64_t hi = std::min(slot.offset + slot.param->grad.numel(), end);
      double squares = 0;
      for (int64_t i = lo; i < hi; ++i) {
        squares += static_cast<double>(chunk[i - begin]) * chunk[i - begin];
      }
      if (lo < hi) total += squares / static_cast<double>(TpCopies(*slot.param, tp_size));
    }
  }
  return total;
}

// Fails unless every rank of `group` holds the same values of `params`. A
// weighted sum also catches weights that are permuted or belong to another
// parameter.
absl::Status CheckSameOverGroup(const std::vector<Parameter*>& params, Communicator* group,
                                const char* what) {
  double checksum = 0;
  int64_t p = 0;
  for (Parameter* param : params) {
    const float* x = param->value.data<float>();
    for (int64_t i = 0; i < param->value.numel(); ++i) {
      checksum += static_cast<double>(x[i]) * static_cast<double>(1 + (i + 31 * p) % 97);
    }
    ++p;
  }
  Tensor extremes = Tensor::Empty({2}, DType::kF64);
  extremes.data<double>()[0] = checksum;
  extremes.data<double>()[1] = -checksum;
  group->AllReduceSync(extremes, ReduceOp::kMax);
  const double max = extremes.data<double>()[0];
  const double min = -extremes.data<double>()[1];
  if (max != min) {
    return absl::InternalError(absl::StrFormat(
        "the initial %s differ between ranks (checksum %.17g here, between %.17g and %.17g "
        "over %d ranks); every rank must run the same binary with the same --seed and "
        "model flags",
        what, checksum, min, max, group->size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Trainer::CheckReplicasAgree() {
  // Initialisation is keyed by (seed, name, element index), so every rank
  // draws the same weights with no broadcast; this checks it: the
  // non-expert weights over all ranks (under TP: the TP slices over their
  // DP replicas, the whole ones over all ranks), each expert over its EDP
  // replicas.
  if (edp_ == nullptr) return CheckSameOverGroup(model_.Parameters(), world_, "weights");
  if (tp_ == nullptr) {
    if (absl::Status s = CheckSameOverGroup(model_.NonExpertParameters(), world_, "weights");
        !s.ok()) {
      return s;
    }
  } else {
    if (absl::Status s = CheckSameOverGroup(model_.NonExpertParameters(), dp_.get(), "weights");
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            CheckSameOverGroup(model_.TpReplicatedParameters(), world_, "replicated weights");
        !s.ok()) {
      return s;
    }
  }
  return CheckSameOverGroup(model_.ExpertParameters(), edp_.get(), "expert weights");
}

double Trainer::ReduceAndClip() {
  // Under TP, the whole-held parameters' grads cover this rank's sequence
  // shard only: sum them over TP first, then reduce over DP as usual.
  if (tp_ != nullptr) SumGradsOverTp(model_.TpReplicatedParameters(), tp_.get());
  // Each rank sums the squares of the reduced gradient elements it owns (its
  // chunks when a group is sharded or bucketed over its replicas, else all
  // of them; under TP a parameter's divided by its TP copies); summed over
  // the world, every element counts once.
  const int tp_size = tp_ != nullptr ? tp_->size() : 1;
  double owned_squares = 0;
  std::vector<Parameter*> owned;  // the grads this rank clips
  if (dist_optimizer_ != nullptr) {
    dist_optimizer_->ReduceGradients();
    owned_squares += tp_ != nullptr ? TpWeightedOwnedSquares(dist_optimizer_->buckets(), tp_size)
                                    : dist_optimizer_->OwnedSquaredGradNorm();
    for (Parameter* p : dist_optimizer_->shard_params()) owned.push_back(p);
    if (expert_dist_optimizer_ != nullptr) {
      expert_dist_optimizer_->ReduceGradients();
      owned_squares += expert_dist_optimizer_->OwnedSquaredGradNorm();
      for (Parameter* p : expert_dist_optimizer_->shard_params()) owned.push_back(p);
    }
  } else {
    const std::vector<Parameter*> dense =
        edp_ != nullptr ? model_.NonExpertParameters() : model_.Parameters();
    if (buckets_ != nullptr) {
      buckets_->Reduce();
      owned_squares += tp_ != nullptr ? TpWeightedOwnedSquares(*buckets_, tp_size)
                                      : buckets_->OwnedSquaredNorm();
    } else if (tp_ != nullptr) {
      for (Parameter* p : dense) {
        owned_squares += GradSquaredNorm({p}) / static_cast<double>(TpCopies(*p, tp_size));
      }
    } else {
      owned_squares += GradSquaredNorm(dense);
    }
    if (edp_ != nullptr) {
      owned_squares += expert_buckets_ != nullptr
                           ? (expert_buckets_->Reduce(), expert_buckets_->OwnedSquaredNorm())
                           : GradSquaredNorm(model_.ExpertParameters());
    }
    owned = optimizer_->params();
  }
  double squared_norm = owned_squares;
  if (world_->size() > 1) {
    Tensor sum = Tensor::Empty({1}, DType::kF64);
    sum.data<double>()[0] = owned_squares;
    world_->AllReduceSync(sum, ReduceOp::kSum);
    squared_norm = sum.data<double>()[0];
  }
  return options_.clip_grad > 0 ? ClipGradNorm(owned, options_.clip_grad, squared_norm)
                                : std::sqrt(squared_norm);
}

void Trainer::ApplyUpdate(double lr) {
  if (dist_optimizer_ != nullptr) {
    dist_optimizer_->Step(lr);
    if (expert_dist_optimizer_ != nullptr) expert_dist_optimizer_->Step(lr);
  } else {
    optimizer_->Step(lr);
  }
}

void Trainer::ZeroGrads() {
  if (dist_optimizer_ != nullptr) {
    dist_optimizer_->ZeroGrad();
    if (expert_dist_optimizer_ != nullptr) expert_dist_optimizer_->ZeroGrad();
  } else {
    for (Parameter* p : optimizer_->params()) p->grad.SetZero();
  }
}

absl::Status Trainer::LoadSamples(bool validation, int64_t first, int64_t count) {
  const GptDataset& dataset = validation ? *valid_ : train_;
  const char* flag = validation ? kValidFlag : kDataFlag;
  const int64_t row = options_.seq_length + 1;
  sample_buffer_.resize(static_cast<size_t>(count * row));
  for (int64_t i = 0; i < count; ++i) {
    int32_t* tokens = sample_buffer_.data() + i * row;
    absl::Status read =
        validation ? dataset.ReadWindow(first + i, tokens) : dataset.GetSample(first + i, tokens);
    if (!read.ok()) {
      return absl::DataLossError(
          absl::StrCat(flag, "=", dataset.dataset().prefix(), ": ", read.message()));
    }
    for (int64_t t = 0; t < row; ++t) {
      if (tokens[t] < 0 || tokens[t] >= options_.model.vocab_size) {
        return VocabError(flag, dataset.dataset().prefix(), options_.model.vocab_size, tokens[t],
                          absl::StrCat(validation ? "window " : "sample ", first + i));
      }
    }
  }
  return absl::OkStatus();
}

void Trainer::MicroBatch(int64_t m, Tensor* ids, Tensor* labels) const {
  const int64_t mbs = options_.micro_batch_size;
  const int64_t seq = options_.seq_length;
  *ids = Tensor::Empty({mbs, seq}, DType::kI32);
  *labels = Tensor::Empty({mbs, seq}, DType::kI32);
  int32_t* ids_data = ids->data<int32_t>();
  int32_t* labels_data = labels->data<int32_t>();
  for (int64_t b = 0; b < mbs; ++b) {
    const int32_t* sample = sample_buffer_.data() + (m * mbs + b) * (seq + 1);
    std::copy(sample, sample + seq, ids_data + b * seq);
    std::copy(sample + 1, sample + seq + 1, labels_data + b * seq);
  }
}

absl::StatusOr<StepStats> Trainer::Step() {
  const auto start = std::chrono::steady_clock::now();
  const int64_t gbs = options_.global_batch_size;
  const int64_t num_micro = gbs / options_.micro_batch_size;
  // This DP rank's slice of the global batch (BuildRankGrid checked that
  // DP * micro_batch_size divides it).
  const int64_t local = gbs / dp_->size();
  const int64_t num_local_micro = local / options_.micro_batch_size;
  StepStats stats;
  stats.step = step_ + 1;
  const Communicator::CommTime comm_before = world_->Times();

  if (absl::Status s = LoadSamples(/*validation=*/false, step_ * gbs + dp_->rank() * local, local);
      !s.ok()) {
    return s;
  }
  // Labels are counted over the whole global batch (all DP ranks) before any
  // micro-batch runs, so that each token weighs the same whatever the split.
  // Every label counts today; a label < 0 (padding, masked prompt) would not.
  const int64_t row = options_.seq_length + 1;
  int64_t local_tokens = 0;
  for (int64_t i = 0; i < local; ++i) {
    const int32_t* sample = sample_buffer_.data() + i * row;
    local_tokens += std::count_if(sample + 1, sample + row, [](int32_t t) { return t >= 0; });
  }
  std::vector<double> token_sum = {static_cast<double>(local_tokens)};  // exact below 2^53
  SumOverDp(&token_sum);
  const auto global_tokens = static_cast<int64_t>(token_sum[0]);
  LossScales scales;
  scales.lm = global_tokens > 0 ? 1.0 / static_cast<double>(global_tokens) : 0.0;
  scales.aux = 1.0 / static_cast<double>(num_micro);
  scales.z = scales.aux;

  const int64_t layers = options_.model.num_hidden_layers;
  const ModelConfig& c = options_.model;
  // One all-reduce over DP at the end: the four losses, then per layer the
  // received, dropped and routed counts of each of its experts (none for a
  // dense layer) and the entropy sum.
  enum { kLm, kAux, kZ, kEntropy, kScalars };
  std::vector<int64_t> experts(layers), at(layers);
  int64_t size = kScalars;
  for (int64_t i = 0; i < layers; ++i) {
    experts[i] = c.is_moe_layer(i) ? c.experts_of_layer(i) : 0;
    at[i] = size;
    size += 3 * experts[i] + 1;
  }
  std::vector<double> sums(size, 0.0);
  model_.StartGlobalBatch();
  for (int64_t m = 0; m < num_local_micro; ++m) {
    Tensor ids;
    Tensor labels;
    MicroBatch(m, &ids, &labels);
    // On the last micro-batch every gradient is final as backward produces
    // it: start each bucket's reduction then, overlapped with the rest of
    // backward (not under TP, whose replicated grads are summed over TP
    // after backward, before the DP reduction).
    const bool overlap = m == num_local_micro - 1 && tp_ == nullptr && !bucket_of_.empty();
    if (overlap) {
      model_.SetGradReadyHook([this](const std::vector<Parameter*>& params) {
        for (Parameter* p : params) {
          if (const auto it = bucket_of_.find(p); it != bucket_of_.end()) it->second->MarkReady(p);
        }
      });
    }
    const Losses losses = model_.ForwardBackward(ids, labels, scales);
    if (overlap) model_.SetGradReadyHook(nullptr);
    sums[kLm] += losses.lm_loss_sum;
    sums[kAux] += losses.aux_loss;
    sums[kZ] += losses.z_loss;
    sums[kEntropy] += losses.entropy_loss;
    for (int64_t i = 0; i < layers; ++i) {
      double* layer = sums.data() + at[i];
      const int64_t n = experts[i];
      for (int64_t e = 0; e < n; ++e) {
        layer[e] += losses.expert_tokens[i][e];
        layer[n + e] += losses.expert_dropped[i][e];
        layer[2 * n + e] += losses.expert_routed[i][e];
      }
      layer[3 * n] += losses.router_entropy[i];
    }
  }
  if (dp_->size() > 1) SumOverDp(&sums);
  stats.tokens = global_tokens;
  stats.lm_loss = sums[kLm] * scales.lm;
  stats.aux_loss = sums[kAux] * scales.aux;
  stats.z_loss = sums[kZ] * scales.z;
  stats.entropy_loss = sums[kEntropy] * scales.aux;
  stats.loss = stats.lm_loss + c.router_aux_loss_coef * stats.aux_loss +
               c.router_z_loss_coef * stats.z_loss +
               c.moe_router_topp_entropy_coeff * stats.entropy_loss;
  std::vector<std::vector<double>> routed(layers);
  for (int64_t i = 0; i < layers; ++i) {
    const double* layer = sums.data() + at[i];
    const int64_t n = experts[i];
    stats.expert_tokens.emplace_back(layer, layer + n);
    stats.expert_dropped.emplace_back(layer + n, layer + 2 * n);
    routed[i].assign(layer + 2 * n, layer + 3 * n);
    stats.router_entropy.push_back(layer[3 * n] / static_cast<double>(num_micro));
    const double total = std::accumulate(layer, layer + n, 0.0);
    const double max = n > 0 ? *std::max_element(layer, layer + n) : 0.0;
    stats.load_balance.push_back(total > 0 ? max / (total / static_cast<double>(n)) : 0.0);
  }

  // The norm is the same on every rank, so all ranks skip or step together.
  stats.grad_norm = ReduceAndClip();
  // The k-th update runs at At(k - 1): the schedule counts completed updates,
  // so a skipped step does not advance it (as in Megatron-LM).
  stats.lr =
      schedule_.At(dist_optimizer_ != nullptr ? dist_optimizer_->step() : optimizer_->step());
  if (std::isfinite(stats.grad_norm)) {
    ApplyUpdate(stats.lr);
    // Aux-loss-free balancing: once per global batch, from every rank's
    // routed counts, so every replica moves its bias identically.
    if (c.moe_router_enable_expert_bias) {
      model_.UpdateExpertBias(routed, c.moe_router_bias_update_rate);
    }
    consecutive_nonfinite_ = 0;
  } else {
    ZeroGrads();
    stats.skipped = true;
    ++consecutive_nonfinite_;
  }
  ++step_;
  const Communicator::CommTime comm_after = world_->Times();
  stats.comm_exposed_s = comm_after.exposed_s - comm_before.exposed_s;
  stats.comm_hidden_s = comm_after.hidden_s - comm_before.hidden_s;
  stats.step_s = Seconds(std::chrono::steady_clock::now() - start);
  stats.tokens_per_s =
      stats.step_s > 0 ? static_cast<double>(gbs * options_.seq_length) / stats.step_s : 0.0;
  return stats;
}

absl::StatusOr<double> Trainer::Evaluate() {
  MOE_CHECK(valid_.has_value()) << "Trainer::Evaluate: no validation set (--valid_data_path)";
  const int64_t gbs = options_.global_batch_size;
  const int64_t local = gbs / dp_->size();
  const int64_t num_local_micro = local / options_.micro_batch_size;
  double lm_sum = 0;
  int64_t tokens = 0;
  for (int64_t batch = 0; batch < options_.eval_iters; ++batch) {
    if (absl::Status s = LoadSamples(/*validation=*/true, batch * gbs + dp_->rank() * local, local);
        !s.ok()) {
      return s;
    }
    for (int64_t m = 0; m < num_local_micro; ++m) {
      Tensor ids;
      Tensor labels;
      MicroBatch(m, &ids, &labels);
      const Losses losses = model_.Evaluate(ids, labels);
      lm_sum += losses.lm_loss_sum;
      tokens += losses.tokens;
    }
  }
  if (dp_->size() > 1) {
    std::vector<double> sums = {lm_sum, static_cast<double>(tokens)};
    SumOverDp(&sums);
    lm_sum = sums[0];
    tokens = static_cast<int64_t>(sums[1]);
  }
  return tokens > 0 ? lm_sum / static_cast<double>(tokens) : 0.0;
}

absl::Status Trainer::Train(StepLog* log, std::ostream* out) {
  const bool show_z = options_.model.router_z_loss_coef > 0;
  const int64_t last = options_.train_iters;
  while (step_ < last) {
    absl::StatusOr<StepStats> stats = Step();
    if (!stats.ok()) return stats.status();
    const bool validate =
        valid_.has_value() && (stats->step % options_.eval_interval == 0 || stats->step == last);
    if (validate) {
      absl::StatusOr<double> val_loss = Evaluate();
      if (!val_loss.ok()) return val_loss.status();
      stats->val_loss = *val_loss;
    }
    if (log != nullptr) {
      if (absl::Status s = log->Write(*stats); !s.ok()) return s;
    }
    if (out != nullptr) {
      if (stats->step % options_.log_interval == 0 || stats->step == last || stats->skipped) {
        *out << FormatStepLine(*stats, last, show_z) << std::endl;
      }
      if (stats->val_loss.has_value()) {
        *out << FormatValidationLine(stats->step, *stats->val_loss) << std::endl;
      }
    }
    if (consecutive_nonfinite_ >= options_.max_nonfinite_steps) {
      return absl::InternalError(absl::StrCat(
          "step ", stats->step, ": the gradient norm was not finite for ", consecutive_nonfinite_,
          " steps in a row; training diverged. Lower --lr, raise --lr_warmup_iters or set "
          "--clip_grad"));
    }
    // Every rank stops at the same step, even if a signal reached only some.
    bool stop = false;
    if (stop_ != nullptr) {
      Tensor flag = Tensor::Empty({1}, DType::kI32);
      flag.data<int32_t>()[0] = stop_->load() ? 1 : 0;
      world_->AllReduceSync(flag, ReduceOp::kMax);
      stop = flag.data<int32_t>()[0] != 0;
    }
    const bool exit_now =
        stop || (options_.exit_interval > 0 && step_ % options_.exit_interval == 0);
    if (!options_.save.empty() &&
        ((options_.save_interval > 0 && step_ % options_.save_interval == 0) || exit_now ||
         step_ == last)) {
      absl::StatusOr<CheckpointSaveInfo> saved =
          SaveCheckpoint(*this, options_.save, options_.save_keep);
      if (!saved.ok()) return saved.status();
      if (on_checkpoint_) on_checkpoint_(saved->seconds);
      if (out != nullptr) *out << FormatSaveLine(*saved) << std::endl;
    }
    if (exit_now && step_ < last) {
      stopped_early_ = true;
      if (out != nullptr) {
        *out << "moe-train: stopping after step " << step_ << " of " << last << " ("
             << (stop ? "a stop was requested: SIGTERM or SIGINT" : "--exit_interval") << ")"
             << (options_.save.empty() ? "; no checkpoint (no --save)" : "") << std::endl;
      }
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
