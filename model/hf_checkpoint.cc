#include "model/hf_checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/io/file_util.h"
#include "core/io/safetensors.h"
#include "core/json.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr char kConfigFile[] = "config.json";
constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

std::string PathIn(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

std::string Quoted(std::string_view s) {
  std::string out(1, '"');
  out.append(s.data(), s.size());
  out.push_back('"');
  return out;
}

// transformers before 4.31 saved the rotary inverse frequencies as buffers;
// they are derived from rope_theta, so we accept and ignore them.
bool IsRotaryBuffer(std::string_view name) { return name.ends_with("rotary_emb.inv_freq"); }

// Every routed expert weight of a model of `config`: under expert
// parallelism a rank holds only some of them, and the file's others are
// expected, not foreign.
std::set<std::string> AllExpertWeights(const ModelConfig& config) {
  std::set<std::string> names;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    for (int64_t e = 0; e < config.num_local_experts; ++e) {
      for (const char* w : {"w1", "w2", "w3"}) {
        names.insert(
            absl::StrCat("model.layers.", i, ".block_sparse_moe.experts.", e, ".", w, ".weight"));
      }
    }
  }
  return names;
}

// "model-00001-of-00003.safetensors" (any digit count), as transformers names shards.
bool IsShardFileName(std::string_view name) {
  constexpr std::string_view kPrefix = "model-", kSuffix = ".safetensors";
  if (!name.starts_with(kPrefix) || !name.ends_with(kSuffix)) return false;
  name = name.substr(kPrefix.size(), name.size() - kPrefix.size() - kSuffix.size());
  const size_t of = name.find("-of-");
  if (of == std::string_view::npos || of == 0 || of + 4 == name.size()) return false;
  const std::string_view first = name.substr(0, of), second = name.substr(of + 4);
  auto digits = [](std::string_view s) {
    return std::all_of(s.begin(), s.end(), absl::ascii_isdigit);
  };
  return digits(first) && digits(second);
}

// Up to three names and how many there are in all, for error messages.
std::string SomeNames(const std::vector<std::string>& names) {
  std::vector<std::string> quoted;
  for (size_t i = 0; i < names.size() && i < 3; ++i) quoted.push_back(Quoted(names[i]));
  std::string text = absl::StrJoin(quoted, ", ");
  if (names.size() > 3) absl::StrAppend(&text, " and ", names.size() - 3, " more");
  return text;
}

// The safetensors files of a checkpoint and which file holds each tensor.
struct StoredWeights {
  std::string description;  // the single file or the index, for messages
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> location;  // tensor name -> index into files
};

absl::StatusOr<StoredWeights> OpenSingleFile(const std::string& path) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  StoredWeights stored;
  stored.description = path;
  stored.files.push_back(*std::move(file));
  for (const std::string& name : stored.files[0].names()) stored.location[name] = 0;
  return stored;
}

absl::StatusOr<StoredWeights> OpenShards(const std::string& dir, const std::string& index_path) {
  absl::StatusOr<Json> index = ReadJsonFile(index_path);
  if (!index.ok()) return index.status();
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, " is not a valid safetensors index: ", why,
                     ". Re-create it (save_pretrained writes it) or re-download the checkpoint"));
  };
  const Json* weight_map = index->is_object() ? index->Find("weight_map") : nullptr;
  if (weight_map == nullptr || !weight_map->is_object()) {
    return invalid("it needs a \"weight_map\" object mapping tensor names to shard files");
  }
  // Shards in order of first mention, with the tensors the index puts in each.
  std::vector<std::string> shard_names;
  std::map<std::string, std::vector<std::string>> shard_tensors;
  for (const auto& [tensor, shard] : weight_map->as_object()) {
    if (!shard.is_string()) {
      return invalid(absl::StrCat("weight_map maps ", Quoted(tensor), " to a JSON ",
                                  shard.type_name(), ", not a file name"));
    }
    const std::string& name = shard.as_string();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return invalid(absl::StrCat("weight_map maps ", Quoted(tensor), " to ", Quoted(name),
                                  ", which is not a file name in the checkpoint directory"));
    }
    auto [it, inserted] = shard_tensors.try_emplace(name);
    if (inserted) shard_names.push_back(name);
    it->second.push_back(tensor);
  }
  if (shard_names.empty()) return invalid("its weight_map is empty");

  StoredWeights stored;
  stored.description = index_path;
  for (const std::string& shard : shard_names) {
    const std::vector<std::string>& tensors = shard_tensors[shard];
    const std::string path = PathIn(dir, shard);
    std::error_code error;
    if (!fs::is_regular_file(path, error)) {
      return absl::NotFoundError(absl::StrCat(
          index_path, " puts ", tensors.size(), " tensors (", SomeNames(tensors), ") in shard ",
          shard, ", but ", path,
          " does not exist; the download or copy is incomplete: fetch every shard the index "
          "lists"));
    }
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    if (!file.ok()) return file.status();
    for (const std::string& tensor : tensors) {
      if (!file->Contains(tensor)) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, " says that tensor ", Quoted(tensor), " is in ", path,
                         ", but that file does not contain it; the index and the shards come "
                         "from different saves: re-download or re-save the checkpoint"));
      }
      stored.location[tensor] = stored.files.size();
    }
    // A tensor the index forgot still counts, so that an unexpected one is reported.
    for (const std::string& tensor : file->names()) {
      stored.location.try_emplace(tensor, stored.files.size());
    }
    stored.files.push_back(*std::move(file));
  }
  return stored;
}

absl::StatusOr<StoredWeights> OpenStoredWeights(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(
        "Hugging Face checkpoint directory ", dir,
        " does not exist or is not a directory; pass the folder that holds config.json and "
        "model.safetensors"));
  }
  const std::string single = PathIn(dir, kSingleFile);
  if (fs::exists(single, error)) return OpenSingleFile(single);
  const std::string index = PathIn(dir, kIndexFile);
  if (fs::exists(index, error)) return OpenShards(dir, index);
  return absl::NotFoundError(absl::StrCat(
      dir, " holds no weights: neither ", kSingleFile, " nor ", kIndexFile,
      " is there. Only safetensors checkpoints are read; convert a pytorch_model.bin checkpoint "
      "with save_pretrained(..., safe_serialization=True)"));
}

bool IsLoadableDType(const SafetensorsEntry& entry) {
  return entry.dtype == DType::kF32 || entry.dtype == DType::kBF16 || entry.dtype == DType::kF64;
}

// The whole tensor's shape of a parameter that may be a tensor-parallel
// slice (Parameter::slice; a Parameter made without one is whole).
const Shape& GlobalShape(const Parameter& p) {
  return p.slice.offsets.size() == p.value.shape().size() ? p.slice.global_shape : p.value.shape();
}

bool IsSlice(const Parameter& p) { return GlobalShape(p) != p.value.shape(); }

// Copies the box `slice` of the contiguous CPU tensor `whole` into `out`
// (its shape is the box's), one innermost run at a time.
void CopyBox(const Tensor& whole, const ShardSlice& slice, Tensor* out) {
  const Shape& box = out->shape();
  const int ndim = static_cast<int>(box.size());
  const size_t elem = DTypeSize(whole.dtype());
  const int64_t run = ndim == 0 ? 1 : box[ndim - 1];
  const int64_t runs = run == 0 ? 0 : out->numel() / run;
  const char* src = static_cast<const char*>(whole.raw_data());
  char* dst = static_cast<char*>(out->raw_data());
  std::vector<int64_t> index(static_cast<size_t>(ndim), 0);  // of the run in the box
  for (int64_t r = 0; r < runs; ++r) {
    int64_t offset = 0;  // flat element offset of the run's start in `whole`
    for (int d = 0; d < ndim; ++d) {
      offset = offset * whole.shape()[d] + slice.offsets[d] + index[d];
    }
    std::memcpy(dst + r * run * elem, src + offset * elem, run * elem);
    for (int d = ndim - 2; d >= 0; --d) {  // next run: odometer over the outer dimensions
      if (++index[d] < box[d]) break;
      index[d] = 0;
    }
  }
}

// Checks that the stored tensors and the model's parameters correspond one to
// one, with loadable dtypes and matching shapes, before anything is read.
absl::Status CheckCorrespondence(const StoredWeights& stored, const std::vector<Parameter*>& params,
                                 const std::set<std::string>& held_elsewhere) {
  std::vector<std::string> missing;
  std::set<std::string_view> wanted;
  for (const Parameter* p : params) {
    wanted.insert(p->name);
    if (!stored.location.contains(p->name)) missing.push_back(p->name);
  }
  if (!missing.empty()) {
    return absl::NotFoundError(absl::StrCat(
        stored.description, " lacks ", missing.size(), " of the model's ", params.size(),
        " parameters: ", SomeNames(missing),
        ". The weights are incomplete or were saved for a different architecture; check that "
        "config.json (num_hidden_layers, num_local_experts) belongs to these weights"));
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, file] : stored.location) {
    if (!wanted.contains(name) && !IsRotaryBuffer(name) && !held_elsewhere.contains(name)) {
      unexpected.push_back(name);
    }
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        stored.description, " holds ", unexpected.size(),
        " tensors that the model does not have: ", SomeNames(unexpected),
        ". Only Mixtral checkpoints (MixtralForCausalLM, untied lm_head) are read, and "
        "config.json must describe these weights (num_hidden_layers, num_local_experts)"));
  }
  for (const Parameter* p : params) {
    const SafetensorsFile& file = stored.files[stored.location.at(p->name)];
    const SafetensorsEntry& entry = *file.Find(p->name);
    if (!IsLoadableDType(entry)) {
      return absl::UnimplementedError(absl::StrCat(
          "tensor ", Quoted(p->name), " in ", file.path(), " has dtype ", entry.dtype_name,
          ", which is not supported (F32, BF16 and F64 are); convert the checkpoint first, "
          "e.g. model.to(torch.bfloat16).save_pretrained(...)"));
    }
    if (entry.shape != GlobalShape(*p)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", Quoted(p->name), " in ", file.path(), " has shape ",
          ShapeToString(entry.shape), ", but the model expects ", ShapeToString(GlobalShape(*p)),
          "; config.json does not describe these weights (check hidden_size, "
          "intermediate_size, the head counts and vocab_size)"));
    }
  }
  return absl::OkStatus();
}

absl::Status LoadParameter(const SafetensorsFile& file, Parameter* p) {
  const SafetensorsEntry& entry = *file.Find(p->name);
  if (entry.dtype == p->value.dtype() && !IsSlice(*p)) return file.ReadInto(p->name, p->value);
  absl::StatusOr<Tensor> stored = file.Read(p->name);
  if (!stored.ok()) return stored.status();
  const Tensor whole =
      stored->dtype() == p->value.dtype() ? *stored : stored->Cast(p->value.dtype());
  if (!IsSlice(*p)) {
    p->value.CopyFrom(whole);
    return absl::OkStatus();
  }
  // A tensor-parallel slice: this rank's box of the whole tensor.
  Tensor box = Tensor::Empty(p->value.shape(), p->value.dtype());
  CopyBox(whole, p->slice, &box);
  p->value.CopyFrom(box);
  return absl::OkStatus();
}

// Removes `path` if it exists.
absl::Status RemoveIfPresent(const std::string& path) {
  std::error_code error;
  fs::remove(path, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", error.message(),
                                            "; check the permissions of the directory"));
  }
  return absl::OkStatus();
}

// Removes weight files that are not among `keep`: a previous save in the other
// layout, or shards of a previous save with a different shard count.
absl::Status RemoveStaleWeights(const std::string& dir, const std::set<std::string>& keep) {
  std::error_code error;
  std::vector<std::string> stale;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == kSingleFile || name == kIndexFile || IsShardFileName(name);
    if (weights && !keep.contains(name)) stale.push_back(entry.path().string());
  }
  if (error) {
    return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  }
  for (const std::string& path : stale) {
    if (absl::Status s = RemoveIfPresent(path); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadHfWeights(const std::string& dir, Model* model) {
  absl::StatusOr<StoredWeights> stored = OpenStoredWeights(dir);
  if (!stored.ok()) return stored.status();
  const std::vector<Parameter*> params = model->Parameters();
  if (absl::Status s = CheckCorrespondence(*stored, params, AllExpertWeights(model->config()));
      !s.ok()) {
    return s;
  }
  for (Parameter* p : params) {
    const SafetensorsFile& file = stored->files[stored->location.at(p->name)];
    if (absl::Status s = LoadParameter(file, p); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) {
    return absl::NotFoundError(absl::StrCat(
        "Hugging Face checkpoint directory ", dir,
        " does not exist or is not a directory; pass the folder that holds config.json and "
        "model.safetensors"));
  }
  const std::string config_path = PathIn(dir, kConfigFile);
  if (!fs::exists(config_path, error)) {
    return absl::NotFoundError(
        absl::StrCat(config_path,
                     " is missing: a Hugging Face model directory needs config.json beside "
                     "the weights (save_pretrained writes it; an interrupted save leaves it out)"));
  }
  absl::StatusOr<ModelConfig> config = ModelConfig::FromHfFile(config_path);
  if (!config.ok()) return config.status();
  auto model = std::make_unique<Model>(*config);
  if (absl::Status s = LoadHfWeights(dir, model.get()); !s.ok()) return s;
  return model;
}

absl::Status SaveHfModel(const std::string& dir, Model& model, int64_t max_shard_bytes) {
  if (absl::Status s = model.config().CheckHfExportable(); !s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("cannot export to Hugging Face Mixtral: ", s.message()));
  }
  if (max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SaveHfModel: max_shard_bytes must be positive, got ", max_shard_bytes));
  }
  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir)) {
    return absl::InternalError(
        absl::StrCat("cannot create the checkpoint directory ", dir, ": ",
                     error ? error.message() : "a file of that name exists"));
  }
  // Without config.json the directory does not look loadable until we are done.
  const std::string config_path = PathIn(dir, kConfigFile);
  if (absl::Status s = RemoveIfPresent(config_path); !s.ok()) return s;

  // Greedy packing in parameter order, as transformers' save_pretrained does.
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (const Parameter* p : model.Parameters()) {
    const auto bytes = static_cast<int64_t>(p->value.nbytes());
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(p->name, p->value);
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  std::set<std::string> written;
  if (shards.size() == 1) {
    if (absl::Status s = WriteSafetensors(PathIn(dir, kSingleFile), shards[0]); !s.ok()) return s;
    written.insert(kSingleFile);
  } else {
    std::map<std::string, std::string> weight_map;  // sorted by name, like transformers
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name =
          absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
      if (absl::Status s = WriteSafetensors(PathIn(dir, name), shards[i]); !s.ok()) return s;
      for (const auto& [tensor, value] : shards[i]) weight_map[tensor] = name;
      written.insert(name);
    }
    Json map = Json::MakeObject();
    for (const auto& [tensor, file] : weight_map) map.Set(tensor, file);
    Json index = Json::MakeObject();
    index.Set("metadata", Json::MakeObject({{"total_size", total_bytes}}));
    index.Set("weight_map", std::move(map));
    if (absl::Status s = WriteFileAtomically(PathIn(dir, kIndexFile), index.Dump(2) + "\n");
        !s.ok()) {
      return s;
    }
    written.insert(kIndexFile);
  }
  if (absl::Status s = RemoveStaleWeights(dir, written); !s.ok()) return s;
  return WriteFileAtomically(config_path, model.config().ToHfJson().Dump(2) + "\n");
}

}  // namespace moe
