#include "launcher/checkpoint.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "launcher/checkpoint_format.h"
#include "model/hf_checkpoint.h"
#include "parallel/tensor_parallel/shard.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kExpAvg = "exp_avg";
constexpr std::string_view kExpAvgSq = "exp_avg_sq";
constexpr std::string_view kMaster = "master";

// The model fields that change the weights' shapes or the function the
// model computes, with the flag that sets each. The loss coefficients,
// initializer_range and max_position_embeddings may change on resume.
struct IntField {
  int64_t ModelConfig::*field;
  const char* name;
  const char* flag;
};
constexpr IntField kIntFields[] = {
    {&ModelConfig::vocab_size, "vocab_size", "--vocab_size"},
    {&ModelConfig::hidden_size, "hidden_size", "--hidden_size"},
    {&ModelConfig::intermediate_size, "intermediate_size", "--ffn_hidden_size"},
    {&ModelConfig::num_hidden_layers, "num_hidden_layers", "--num_layers"},
    {&ModelConfig::num_attention_heads, "num_attention_heads", "--num_attention_heads"},
    {&ModelConfig::num_key_value_heads, "num_key_value_heads", "--num_query_groups"},
    {&ModelConfig::num_local_experts, "num_local_experts", "--num_experts"},
    {&ModelConfig::num_experts_per_tok, "num_experts_per_tok", "--moe_router_topk"},
    {&ModelConfig::moe_shared_expert_intermediate_size, "moe_shared_expert_intermediate_size",
     "--moe_shared_expert_intermediate_size"},
};
struct DoubleField {
  double ModelConfig::*field;
  const char* name;
  const char* flag;
};
constexpr DoubleField kDoubleFields[] = {
    {&ModelConfig::rope_theta, "rope_theta", "--rotary_base"},
    {&ModelConfig::rms_norm_eps, "rms_norm_eps", "--norm_epsilon"},
};

// The first model field in which `stored` (described by `source`) differs
// from the run's `wanted`, as an error naming the flag; OK if none does.
absl::Status CompareModels(const ModelConfig& stored, const ModelConfig& wanted,
                           const std::string& source, const char* fix) {
  const auto differ = [&](const char* name, const char* flag, const std::string& have,
                          const std::string& want) {
    return absl::FailedPreconditionError(absl::StrCat(source, " has ", name, " = ", have,
                                                      ", but this run has ", flag, "=", want,
                                                      "; pass ", flag, "=", have, " (", fix, ")"));
  };
  for (const IntField& f : kIntFields) {
    if (stored.*f.field != wanted.*f.field) {
      return differ(f.name, f.flag, absl::StrCat(stored.*f.field), absl::StrCat(wanted.*f.field));
    }
  }
  if (stored.resolved_head_dim() != wanted.resolved_head_dim()) {
    return differ("head_dim", "--kv_channels", absl::StrCat(stored.resolved_head_dim()),
                  absl::StrCat(wanted.resolved_head_dim()));
  }
  for (const DoubleField& f : kDoubleFields) {
    if (stored.*f.field != wanted.*f.field) {
      return differ(f.name, f.flag, absl::StrCat(stored.*f.field), absl::StrCat(wanted.*f.field));
    }
  }
  if (stored.moe_use_residual != wanted.moe_use_residual) {
    return differ("moe_use_residual", "--moe_use_residual",
                  stored.moe_use_residual ? "true" : "false",
                  wanted.moe_use_residual ? "true" : "false");
  }
  return absl::OkStatus();
}

// Whether experts' replicas follow the expert grid (EDP, ETP) rather than the dense one.
bool IsExpertParameter(const std::string& name) { return absl::StrContains(name, ".experts."); }

// Where p's value sits in the whole tensor. A Parameter built without a
// slice (an expert's view, say) holds the whole tensor.
ShardSlice SliceOf(const Parameter& p) {
  if (p.slice.offsets.size() != p.value.shape().size()) return ShardSlice::Whole(p.value.shape());
  return p.slice;
}

bool IsSliced(const Parameter& p) { return SliceOf(p).global_shape != p.value.shape(); }

TensorSlice BoxOf(const Parameter& p) {
  const ShardSlice slice = SliceOf(p);
  return TensorSlice::Box(slice.global_shape, slice.offsets);
}

// Whether this rank writes its copy of `p` (sharded_over_dp = false), or its
// distributed-optimizer chunks of `p` (true: DP shards rather than
// replicates them): of a set of replicas, the one at coordinate 0 writes.
// Over TP a parameter has TpCopies holders: all TP ranks for a whole one, one
// for a slice only it has, and for attention's replicated key/value heads
// the runs of TP / groups consecutive TP ranks that share one query group
// (parallel/tensor_parallel/tp_attention.h), whose first rank writes.
bool WritesCopy(const RankCoords& c, int tp_size, const Parameter& p, bool sharded_over_dp) {
  if (IsExpertParameter(p.name))
    return (sharded_over_dp || c.edp == 0) && (IsSliced(p) || c.etp == 0);
  return (sharded_over_dp || c.dp == 0) && c.cp == 0 && c.tp % TpCopies(p, tp_size) == 0;
}

// The distributed optimizers of a trainer: the dense one and, under expert
// parallelism, the experts' (sharded over EDP); none with the replicated optimizer.
std::vector<DistributedOptimizer*> DistOptimizers(Trainer& trainer) {
  std::vector<DistributedOptimizer*> found;
  for (DistributedOptimizer* dist :
       {trainer.distributed_optimizer(), trainer.expert_distributed_optimizer()}) {
    if (dist != nullptr) found.push_back(dist);
  }
  return found;
}

Tensor OnCpu(const Tensor& t) { return t.device() == Device::kCpu ? t : t.To(Device::kCpu); }

// Every rank learns whether any failed; a rank returns its own error, or one
// that points at the failing rank's.
absl::Status Agree(Communicator* world, absl::Status status, const std::string& what) {
  Tensor flag = Tensor::Empty({1}, DType::kI32);
  flag.data<int32_t>()[0] = status.ok() ? 0 : 1;
  world->AllReduceSync(flag, ReduceOp::kMax);
  if (!status.ok()) return status;
  if (flag.data<int32_t>()[0] != 0) {
    return absl::AbortedError(absl::StrCat(what, " failed on another rank (its error says why)"));
  }
  return absl::OkStatus();
}

std::string Bytes(double n) {
  if (n >= 1e9) return absl::StrFormat("%.2f GB", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.1f MB", n / 1e6);
  return absl::StrFormat("%.1f kB", n / 1e3);
}

Json BaseMetadata(int64_t iteration, const ModelConfig& config, const std::string& saved_by,
                  int world_size) {
  Json m = Json::MakeObject();
  m.Set("format", kCheckpointFormatName);
  m.Set("format_version", kCheckpointFormatVersion);
  m.Set("saved_by", saved_by);
  m.Set("iteration", iteration);
  m.Set("model", config.ToJson());
  Json files = Json::MakeArray();
  for (int r = 0; r < world_size; ++r) files.Append(ShardFileName(r));
  m.Set("files", std::move(files));
  return m;
}

Json TrainerMetadata(Trainer& trainer) {
  const TrainerOptions& o = trainer.options();
  Json m = BaseMetadata(trainer.step(), o.model, "moe-train", trainer.world()->size());
  m.Set("consumed_samples", trainer.step() * o.global_batch_size);
  m.Set("optimizer_step", trainer.optimizer_step());
  m.Set("consecutive_nonfinite", trainer.consecutive_nonfinite());
  m.Set("has_optimizer_state", true);
  m.Set("seed", absl::StrCat(o.seed));  // a string: JSON numbers hold 53 bits
  m.Set("global_batch_size", o.global_batch_size);
  m.Set("seq_length", o.seq_length);
  const RankGrid& grid = trainer.grid();
  Json parallel = Json::MakeObject();
  parallel.Set("world_size", grid.world_size());
  parallel.Set("tp", grid.sizes().tp);
  parallel.Set("cp", grid.sizes().cp);
  parallel.Set("pp", grid.sizes().pp);
  parallel.Set("ep", grid.sizes().ep);
  parallel.Set("etp", grid.sizes().etp);
  parallel.Set("dp", grid.dp());
  parallel.Set("edp", grid.edp());
  parallel.Set("use_distributed_optimizer", o.use_distributed_optimizer);
  m.Set("parallel", std::move(parallel));
  return m;
}

// A top-level integer of metadata.json, or `fallback` when absent.
int64_t MetaInt(const Json& m, std::string_view key, int64_t fallback) {
  const Json* v = m.Find(key);
  return v != nullptr && v->is_int() ? v->as_int() : fallback;
}

std::string DescribeLayout(const Json& m) {
  const Json* p = m.Find("parallel");
  if (p == nullptr || !p->is_object()) return "1 rank";
  const int64_t world = MetaInt(*p, "world_size", 1);
  std::string s =
      absl::StrCat(world, world == 1 ? " rank" : " ranks", ": DP ", MetaInt(*p, "dp", 1));
  for (const char* axis : {"tp", "cp", "pp", "ep", "etp"}) {
    if (MetaInt(*p, axis, 1) != 1)
      absl::StrAppend(&s, ", ", absl::AsciiStrToUpper(axis), " ", MetaInt(*p, axis, 1));
  }
  const Json* dist = p->Find("use_distributed_optimizer");
  if (dist != nullptr && dist->is_bool() && dist->as_bool()) {
    absl::StrAppend(&s, ", distributed optimizer");
  }
  return s;
}

absl::StatusOr<ModelConfig> StoredConfig(const CheckpointReader& reader) {
  const Json* model = reader.metadata().Find("model");
  const std::string path = (fs::path(reader.dir()) / kCheckpointMetadataFile).string();
  if (model == nullptr) {
    return absl::DataLossError(absl::StrCat(path, " has no \"model\" config"));
  }
  absl::StatusOr<ModelConfig> config = ModelConfig::FromHfJson(*model);
  if (!config.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", config.status().message()));
  }
  if (absl::Status s = config->Validate(); !s.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", s.message()));
  }
  return config;
}

absl::Status WithFlag(const char* flag, const std::string& value, const absl::Status& s) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(flag, "=", value, ": ", s.message()));
}

// The run-independent checks of CheckCheckpointForRun, on an open reader.
absl::StatusOr<CheckpointSummary> CheckReader(const CheckpointReader& reader,
                                              const TrainerOptions& options) {
  absl::StatusOr<ModelConfig> stored = StoredConfig(reader);
  if (!stored.ok()) return stored.status();
  const std::string source = absl::StrCat("the checkpoint ", reader.dir());
  if (absl::Status s = CompareModels(*stored, options.model, source,
                                     "its metadata.json \"model\" lists every field; or load a "
                                     "checkpoint of this model");
      !s.ok()) {
    return s;
  }
  const Json& m = reader.metadata();
  if (const Json* seed = m.Find("seed");
      seed != nullptr && seed->is_string() && seed->as_string() != absl::StrCat(options.seed)) {
    return absl::FailedPreconditionError(absl::StrCat(
        source, " was trained with --seed=", seed->as_string(), ", this run has --seed=",
        options.seed, "; the seed fixes the data order, so resuming needs the same: pass --seed=",
        seed->as_string()));
  }
  for (auto [key, flag, value] :
       {std::tuple{"global_batch_size", "--global_batch_size", options.global_batch_size},
        std::tuple{"seq_length", "--seq_length", options.seq_length}}) {
    const int64_t have = MetaInt(m, key, value);
    if (have != value) {
      return absl::FailedPreconditionError(absl::StrCat(
          source, " was trained with ", flag, "=", have, ", this run has ", flag, "=", value,
          "; the data position of a resumed run depends on it: pass ", flag, "=", have));
    }
  }
  if (reader.iteration() > options.train_iters) {
    return absl::FailedPreconditionError(absl::StrCat(
        source, " is at step ", reader.iteration(), ", past --train_iters=", options.train_iters,
        " (the total step count); raise --train_iters"));
  }
  CheckpointSummary summary;
  summary.dir = reader.dir();
  summary.iteration = reader.iteration();
  const Json* has_state = m.Find("has_optimizer_state");
  summary.has_optimizer_state =
      has_state != nullptr && has_state->is_bool() && has_state->as_bool();
  summary.saved_under = DescribeLayout(m);
  return summary;
}

// Fails unless the checkpoint holds `name` with `p`'s global shape.
absl::Status CheckHolds(const CheckpointReader& reader, const std::string& name, const Parameter& p,
                        std::vector<std::string>* missing) {
  const Shape* shape = reader.GlobalShape(name);
  if (shape == nullptr) {
    missing->push_back(name);
    return absl::OkStatus();
  }
  if (*shape != SliceOf(p).global_shape) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the checkpoint ", reader.dir(), " holds ", name, " as ", ShapeToString(*shape),
        ", but the model's is ", ShapeToString(SliceOf(p).global_shape),
        "; the checkpoint belongs to another model: pass its model flags"));
  }
  return absl::OkStatus();
}

absl::Status MissingError(const CheckpointReader& reader, const std::vector<std::string>& missing,
                          const char* fix) {
  std::vector<std::string> some(missing.begin(),
                                missing.begin() + std::min<size_t>(missing.size(), 3));
  return absl::NotFoundError(absl::StrCat("the checkpoint ", reader.dir(), " lacks ",
                                          missing.size(),
                                          " tensors this run needs: ", absl::StrJoin(some, ", "),
                                          missing.size() > 3 ? ", ..." : "", "; ", fix));
}

absl::Status LoadFromReader(const CheckpointReader& reader, Trainer* trainer) {
  const std::vector<Parameter*> params = trainer->model().Parameters();
  const Json& m = reader.metadata();
  const Json* has_state = m.Find("has_optimizer_state");
  const bool with_state = has_state != nullptr && has_state->is_bool() && has_state->as_bool();
  // Everything is checked before anything is read.
  std::vector<std::string> missing;
  for (const Parameter* p : params) {
    if (absl::Status s = CheckHolds(reader, p->name, *p, &missing); !s.ok()) return s;
  }
  for (const Model::Buffer& b : trainer->model().Buffers()) {
    if (!reader.Contains(b.name)) missing.push_back(b.name);
  }
  if (!missing.empty()) {
    return MissingError(reader, missing,
                        "the shard files are incomplete or from another model (a run with "
                        "--moe_router_enable_expert_bias needs a checkpoint saved with it): load "
                        "another checkpoint");
  }
  if (with_state) {
    for (const Parameter* p : params) {
      for (std::string_view kind : {kExpAvg, kExpAvgSq}) {
        if (absl::Status s = CheckHolds(reader, OptimizerStateName(kind, p->name), *p, &missing);
            !s.ok()) {
          return s;
        }
      }
    }
    if (!missing.empty()) {
      return MissingError(reader, missing,
                          "its optimizer state is incomplete: load another checkpoint");
    }
  }
  for (Parameter* p : params) {
    if (p->value.device() == Device::kCpu) {
      if (absl::Status s = reader.Read(p->name, BoxOf(*p), &p->value); !s.ok()) return s;
    } else {
      Tensor host = Tensor::Empty(p->value.shape(), p->value.dtype());
      if (absl::Status s = reader.Read(p->name, BoxOf(*p), &host); !s.ok()) return s;
      p->value.CopyFrom(host);
    }
  }
  for (const Model::Buffer& b : trainer->model().Buffers()) {
    if (absl::Status s = reader.Read(b.name, TensorSlice::Whole(b.value->shape()), b.value);
        !s.ok())
      return s;
  }
  const int64_t optimizer_step = with_state ? MetaInt(m, "optimizer_step", 0) : 0;
  if (AdamW* adam = trainer->optimizer(); adam != nullptr) {
    for (size_t i = 0; i < adam->params().size(); ++i) {
      const Parameter& p = *adam->params()[i];
      AdamW::State& state = adam->state(i);
      if (with_state) {
        for (auto [kind, tensor] :
             {std::pair{kExpAvg, &state.exp_avg}, std::pair{kExpAvgSq, &state.exp_avg_sq}}) {
          if (absl::Status s = reader.Read(OptimizerStateName(kind, p.name), BoxOf(p), tensor);
              !s.ok()) {
            return s;
          }
        }
      }
      if (state.master.defined()) {
        const std::string master = OptimizerStateName(kMaster, p.name);
        if (with_state && reader.Contains(master)) {
          if (absl::Status s = reader.Read(master, BoxOf(p), &state.master); !s.ok()) return s;
        } else {
          state.master.CopyFrom(p.value.Cast(DType::kF32));
        }
      }
    }
    adam->set_step(optimizer_step);
  }
  for (DistributedOptimizer* dist : DistOptimizers(*trainer)) {
    dist->CopyMastersFromParams();
    if (with_state) {
      for (DistributedOptimizer::ShardPiece& piece : dist->ShardPieces()) {
        const Parameter& p = *piece.param;
        const TensorSlice run = TensorSlice::FlatRun(BoxOf(p), p.value.shape(), piece.offset);
        for (auto [kind, tensor] :
             {std::pair{kExpAvg, &piece.exp_avg}, std::pair{kExpAvgSq, &piece.exp_avg_sq}}) {
          if (absl::Status s = reader.Read(OptimizerStateName(kind, p.name), run, tensor);
              !s.ok()) {
            return s;
          }
        }
      }
    }
    dist->set_step(optimizer_step);
  }
  trainer->RestoreProgress(
      reader.iteration(),
      static_cast<int>(with_state ? MetaInt(m, "consecutive_nonfinite", 0) : 0));
  return absl::OkStatus();
}

}  // namespace

std::string FormatSaveLine(const CheckpointSaveInfo& info) {
  return absl::StrFormat(
      "checkpoint | step %d | saved %s | %s in %.2f s (%.2f GB/s)", info.step, info.path,
      Bytes(static_cast<double>(info.bytes)), info.seconds,
      info.seconds > 0 ? static_cast<double>(info.bytes) / info.seconds / 1e9 : 0.0);
}

absl::StatusOr<CheckpointSaveInfo> SaveCheckpoint(Trainer& trainer, const std::string& dir,
                                                  int keep) {
  const auto start = std::chrono::steady_clock::now();
  Communicator* world = trainer.world();
  const int rank = world->rank();
  const int64_t step = trainer.step();
  const std::string what = absl::StrCat("saving the checkpoint of step ", step, " to --save=", dir);
  const std::string temp = (fs::path(dir) / (IterationDirName(step) + ".tmp")).string();
  absl::Status status;
  if (rank == 0) status = BeginCheckpointSave(dir, step).status();
  if (absl::Status s = Agree(world, status, what); !s.ok()) return s;

  // This rank's share: see the header comment.
  const RankCoords coords = trainer.grid().Coords(rank);
  const int tp_size = trainer.grid().sizes().tp;
  std::vector<ShardTensor> tensors;
  AdamW* adam = trainer.optimizer();
  const std::vector<Parameter*> params = trainer.model().Parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    const Parameter& p = *params[i];
    if (!WritesCopy(coords, tp_size, p, /*sharded_over_dp=*/false)) continue;
    tensors.push_back({p.name, BoxOf(p), OnCpu(p.value)});
    if (adam == nullptr) continue;
    // The replicated optimizer's params are the model's, in the same order.
    const AdamW::State& state = adam->state(i);
    tensors.push_back({OptimizerStateName(kExpAvg, p.name), BoxOf(p), OnCpu(state.exp_avg)});
    tensors.push_back({OptimizerStateName(kExpAvgSq, p.name), BoxOf(p), OnCpu(state.exp_avg_sq)});
    if (state.master.defined()) {
      tensors.push_back({OptimizerStateName(kMaster, p.name), BoxOf(p), OnCpu(state.master)});
    }
  }
  // Buffers (the routers' expert bias) are the same on every rank: rank 0 writes them.
  if (rank == 0) {
    for (const Model::Buffer& b : trainer.model().Buffers()) {
      tensors.push_back({b.name, TensorSlice::Whole(b.value->shape()), OnCpu(*b.value)});
    }
  }
  for (DistributedOptimizer* dist : DistOptimizers(trainer)) {
    for (const DistributedOptimizer::ShardPiece& piece : dist->ShardPieces()) {
      const Parameter& p = *piece.param;
      if (!WritesCopy(coords, tp_size, p, /*sharded_over_dp=*/true)) continue;
      const TensorSlice run = TensorSlice::FlatRun(BoxOf(p), p.value.shape(), piece.offset);
      tensors.push_back({OptimizerStateName(kExpAvg, p.name), run, piece.exp_avg});
      tensors.push_back({OptimizerStateName(kExpAvgSq, p.name), run, piece.exp_avg_sq});
    }
  }
  int64_t bytes = 0;
  for (const ShardTensor& t : tensors) bytes += static_cast<int64_t>(t.data.nbytes());
  status = WriteShardFile((fs::path(temp) / ShardFileName(rank)).string(), tensors, step, rank);
  status = Agree(world, status, what);
  if (rank == 0) {
    if (status.ok()) status = CommitCheckpointSave(dir, step, temp, TrainerMetadata(trainer), keep);
    if (!status.ok()) AbandonCheckpointSave(temp);
  }
  if (absl::Status s = Agree(world, status, what); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), "; ", dir,
                                               "/latest still names the previous checkpoint"));
  }
  Tensor total = Tensor::Empty({1}, DType::kF64);
  total.data<double>()[0] = static_cast<double>(bytes);
  world->AllReduceSync(total, ReduceOp::kSum);
  CheckpointSaveInfo info;
  info.path = (fs::path(dir) / IterationDirName(step)).string();
  info.step = step;
  info.bytes = static_cast<int64_t>(total.data<double>()[0]);
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return info;
}

absl::StatusOr<CheckpointSummary> CheckCheckpointForRun(const std::string& load,
                                                        const TrainerOptions& options) {
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(load);
  if (!reader.ok()) return WithFlag("--load", load, reader.status());
  absl::StatusOr<CheckpointSummary> summary = CheckReader(*reader, options);
  if (!summary.ok()) return WithFlag("--load", load, summary.status());
  return summary;
}

absl::Status LoadCheckpoint(const std::string& load, Trainer* trainer) {
  absl::Status status;
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(load);
  if (!reader.ok()) {
    status = reader.status();
  } else if (absl::StatusOr<CheckpointSummary> summary = CheckReader(*reader, trainer->options());
             !summary.ok()) {
    status = summary.status();
  } else {
    status = LoadFromReader(*reader, trainer);
  }
  return Agree(trainer->world(), WithFlag("--load", load, status),
               absl::StrCat("--load=", load, ": loading the checkpoint"));
}

absl::Status CheckHfModelForRun(const std::string& hf_dir, const TrainerOptions& options) {
  const std::string config_path = (fs::path(hf_dir) / "config.json").string();
  std::error_code error;
  if (!fs::is_directory(hf_dir, error)) {
    return absl::NotFoundError(absl::StrCat(
        "--init_from_hf=", hf_dir,
        ": no such directory; pass a Hugging Face model folder (config.json and "
        "model.safetensors), e.g. one that moe-convert --to_hf or save_pretrained wrote"));
  }
  absl::StatusOr<ModelConfig> config = ModelConfig::FromHfFile(config_path);
  if (!config.ok()) return WithFlag("--init_from_hf", hf_dir, config.status());
  return WithFlag("--init_from_hf", hf_dir,
                  CompareModels(*config, options.model, config_path,
                                "or convert a model of the shape these flags describe"));
}

absl::Status InitFromHf(const std::string& hf_dir, Trainer* trainer) {
  absl::Status status = CheckHfModelForRun(hf_dir, trainer->options());
  if (status.ok()) {
    status = WithFlag("--init_from_hf", hf_dir, LoadHfWeights(hf_dir, &trainer->model()));
  }
  if (status.ok()) {
    // The optimizers copied the initial weights when they were built.
    if (AdamW* adam = trainer->optimizer(); adam != nullptr) {
      for (size_t i = 0; i < adam->params().size(); ++i) {
        AdamW::State& state = adam->state(i);
        if (state.master.defined()) {
          state.master.CopyFrom(adam->params()[i]->value.Cast(DType::kF32));
        }
      }
    }
    for (DistributedOptimizer* dist : DistOptimizers(*trainer)) dist->CopyMastersFromParams();
  }
  return Agree(trainer->world(), status,
               absl::StrCat("--init_from_hf=", hf_dir, ": loading the model"));
}

absl::StatusOr<CheckpointSaveInfo> SaveModelCheckpoint(const std::string& dir, Model& model,
                                                       const std::string& saved_by) {
  const auto start = std::chrono::steady_clock::now();
  std::error_code error;
  if (fs::exists(fs::path(dir) / kCheckpointLatestFile, error)) {
    return absl::AlreadyExistsError(absl::StrCat(
        dir,
        " already holds a checkpoint (it has a latest file); nothing was written: choose "
        "a new directory"));
  }
  absl::StatusOr<std::string> temp = BeginCheckpointSave(dir, 0);
  if (!temp.ok()) return temp.status();
  std::vector<ShardTensor> tensors;
  int64_t bytes = 0;
  for (const Parameter* p : model.Parameters()) {
    tensors.push_back({p->name, BoxOf(*p), OnCpu(p->value)});
    bytes += static_cast<int64_t>(p->value.nbytes());
  }
  Json metadata = BaseMetadata(0, model.config(), saved_by, 1);
  metadata.Set("has_optimizer_state", false);
  absl::Status status =
      WriteShardFile((fs::path(*temp) / ShardFileName(0)).string(), tensors, 0, 0);
  if (status.ok()) status = CommitCheckpointSave(dir, 0, *temp, metadata, /*keep=*/0);
  if (!status.ok()) {
    AbandonCheckpointSave(*temp);
    return status;
  }
  CheckpointSaveInfo info;
  info.path = (fs::path(dir) / IterationDirName(0)).string();
  info.bytes = bytes;
  info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return info;
}

absl::StatusOr<std::unique_ptr<Model>> LoadModelFromCheckpoint(const std::string& load) {
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(load);
  if (!reader.ok()) return WithFlag("--load", load, reader.status());
  absl::StatusOr<ModelConfig> config = StoredConfig(*reader);
  if (!config.ok()) return WithFlag("--load", load, config.status());
  auto model = std::make_unique<Model>(*config);
  std::vector<std::string> missing;
  for (const Parameter* p : model->Parameters()) {
    if (absl::Status s = CheckHolds(*reader, p->name, *p, &missing); !s.ok()) {
      return WithFlag("--load", load, s);
    }
  }
  if (!missing.empty()) {
    return WithFlag(
        "--load", load,
        MissingError(*reader, missing, "the shard files are incomplete: load another checkpoint"));
  }
  for (Parameter* p : model->Parameters()) {
    if (absl::Status s = reader->Read(p->name, BoxOf(*p), &p->value); !s.ok()) {
      return WithFlag("--load", load, s);
    }
  }
  return model;
}

}  // namespace moe
