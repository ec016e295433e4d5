#include "model/hf_checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/file_util.h"
#include "core/io/safetensors.h"
#include "core/json.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

using TensorList = std::vector<std::pair<std::string, Tensor>>;

ModelConfig Tiny() {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.max_position_embeddings = 32;
  c.rope_theta = 5000;
  return c;
}

std::unique_ptr<Model> RandomModel(uint64_t seed) {
  auto model = std::make_unique<Model>(Tiny());
  model->InitializeWeights(seed);
  return model;
}

// An empty directory of its own for each test.
std::string FreshDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/hf_checkpoint_test_", ::getpid(), "_", name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string In(const std::string& dir, const std::string& name) { return dir + "/" + name; }

std::vector<std::string> FileNames(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

void ExpectSameParameters(Model& expected, Model& actual) {
  for (Parameter* p : expected.Parameters()) {
    const Parameter* q = actual.FindParameter(p->name);
    ASSERT_NE(q, nullptr) << p->name;
    ASSERT_EQ(q->value.shape(), p->value.shape()) << p->name;
    ASSERT_EQ(q->value.dtype(), p->value.dtype()) << p->name;
    EXPECT_EQ(std::memcmp(q->value.raw_data(), p->value.raw_data(), p->value.nbytes()), 0)
        << p->name << " differs after the round trip";
  }
}

// The model's tensors as a safetensors file would list them.
TensorList ModelTensors(Model& model) {
  TensorList tensors;
  for (Parameter* p : model.Parameters()) tensors.emplace_back(p->name, p->value);
  return tensors;
}

// A hand-made checkpoint: config.json of Tiny() and `tensors` in model.safetensors.
std::string WriteCheckpoint(const std::string& name, const TensorList& tensors) {
  const std::string dir = FreshDir(name);
  EXPECT_TRUE(WriteFileAtomically(In(dir, "config.json"), Tiny().ToHfJson().Dump(2)).ok());
  const absl::Status s = WriteSafetensors(In(dir, "model.safetensors"), tensors);
  EXPECT_TRUE(s.ok()) << s;
  return dir;
}

void ExpectLoadError(const std::string& dir, std::initializer_list<std::string_view> pieces) {
  absl::StatusOr<std::unique_ptr<Model>> model = LoadHfModel(dir);
  ASSERT_FALSE(model.ok()) << dir << " loaded without error";
  const std::string message(model.status().message());
  for (std::string_view piece : pieces) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "expected \"" << piece << "\" in: " << message;
  }
}

TEST(HfCheckpointTest, SingleFileRoundTripIsBitExact) {
  std::unique_ptr<Model> model = RandomModel(3);
  const std::string dir = FreshDir("single");
  ASSERT_TRUE(SaveHfModel(dir, *model).ok());
  EXPECT_EQ(FileNames(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(In(dir, "model.safetensors"));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->names().size(), model->Parameters().size());

  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadHfModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().ToHfJson(), Tiny().ToHfJson());
  ExpectSameParameters(*model, **loaded);
}

TEST(HfCheckpointTest, ShardedRoundTripIsBitExactWithAnIndex) {
  std::unique_ptr<Model> model = RandomModel(4);
  const std::string dir = FreshDir("sharded");
  // The embedding (97 x 16 x 4 = 6208 bytes) fills a shard alone; experts pack several per shard.
  const int64_t max_shard_bytes = 8192;
  ASSERT_TRUE(SaveHfModel(dir, *model, max_shard_bytes).ok());
  const std::vector<std::string> names = FileNames(dir);
  EXPECT_EQ(std::count(names.begin(), names.end(), "model.safetensors"), 0);
  ASSERT_EQ(std::count(names.begin(), names.end(), "model.safetensors.index.json"), 1);

  absl::StatusOr<Json> index = ReadJsonFile(In(dir, "model.safetensors.index.json"));
  ASSERT_TRUE(index.ok()) << index.status();
  const Json& weight_map = *index->Find("weight_map");
  int64_t total = 0;
  for (Parameter* p : model->Parameters()) total += static_cast<int64_t>(p->value.nbytes());
  EXPECT_EQ(index->Find("metadata")->Find("total_size")->as_int(), total);
  EXPECT_EQ(weight_map.size(), model->Parameters().size());

  const int64_t shard_count = static_cast<int64_t>(names.size()) - 2;  // less config and index
  ASSERT_GT(shard_count, 2);
  for (int64_t i = 1; i <= shard_count; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05ld-of-%05ld.safetensors", static_cast<long>(i),
                  static_cast<long>(shard_count));
    absl::StatusOr<SafetensorsFile> shard = SafetensorsFile::Open(In(dir, name));
    ASSERT_TRUE(shard.ok()) << shard.status();
    int64_t bytes = 0;
    for (const SafetensorsEntry& e : shard->entries()) {
      bytes += static_cast<int64_t>(e.data_end - e.data_begin);
      EXPECT_EQ(weight_map.Find(e.name)->as_string(), name) << e.name;
    }
    EXPECT_TRUE(bytes <= max_shard_bytes || shard->entries().size() == 1) << name;
  }

  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadHfModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameParameters(*model, **loaded);
}

TEST(HfCheckpointTest, SavingOverAnotherLayoutRemovesItsFiles) {
  const std::string dir = FreshDir("overwrite");
  std::unique_ptr<Model> a = RandomModel(5), b = RandomModel(6), c = RandomModel(7);
  ASSERT_TRUE(SaveHfModel(dir, *a, 8192).ok());
  ASSERT_TRUE(SaveHfModel(dir, *b).ok());
  EXPECT_EQ(FileNames(dir), (std::vector<std::string>{"config.json", "model.safetensors"}));
  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadHfModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameParameters(*b, **loaded);

  ASSERT_TRUE(SaveHfModel(dir, *c, 20000).ok());
  const std::vector<std::string> names = FileNames(dir);
  EXPECT_EQ(std::count(names.begin(), names.end(), "model.safetensors"), 0);
  loaded = LoadHfModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameParameters(*c, **loaded);
}

TEST(HfCheckpointTest, LoadsBf16WeightsConvertedAndIgnoresRotaryBuffers) {
  std::unique_ptr<Model> model = RandomModel(8);
  TensorList tensors;
  for (Parameter* p : model->Parameters())
    tensors.emplace_back(p->name, p->value.Cast(DType::kBF16));
  // transformers before 4.31 saved these buffers; they are derived, not loaded.
  tensors.emplace_back("model.layers.0.self_attn.rotary_emb.inv_freq",
                       Tensor::Zeros({2}, DType::kF32));
  const std::string dir = WriteCheckpoint("bf16", tensors);
  absl::StatusOr<std::unique_ptr<Model>> loaded = LoadHfModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const auto& [name, stored] : tensors) {
    const Parameter* p = (*loaded)->FindParameter(name);
    if (p == nullptr) continue;  // the rotary buffer
    const Tensor expected = stored.Cast(DType::kF32);
    EXPECT_EQ(std::memcmp(p->value.raw_data(), expected.raw_data(), expected.nbytes()), 0) << name;
  }
}

TEST(HfCheckpointTest, LoadsIntoAnF64Model) {
  std::unique_ptr<Model> model = RandomModel(9);
  const std::string dir = FreshDir("f64");
  ASSERT_TRUE(SaveHfModel(dir, *model).ok());
  Model f64(Tiny(), DType::kF64);
  ASSERT_TRUE(LoadHfWeights(dir, &f64).ok());
  for (Parameter* p : model->Parameters()) {
    const Tensor back = f64.FindParameter(p->name)->value.Cast(DType::kF32);
    EXPECT_EQ(std::memcmp(back.raw_data(), p->value.raw_data(), back.nbytes()), 0) << p->name;
  }
}

TEST(HfCheckpointTest, MissingDirectoryConfigOrWeights) {
  ExpectLoadError(FreshDir("absent") + "/nothing_here", {"nothing_here", "does not exist"});

  std::unique_ptr<Model> model = RandomModel(1);
  std::string dir = FreshDir("no_config");
  ASSERT_TRUE(SaveHfModel(dir, *model).ok());
  fs::remove(In(dir, "config.json"));
  ExpectLoadError(dir, {In(dir, "config.json"), "is missing"});

  dir = FreshDir("no_weights");
  ASSERT_TRUE(WriteFileAtomically(In(dir, "config.json"), Tiny().ToHfJson().Dump()).ok());
  ExpectLoadError(dir, {dir, "holds no weights", "model.safetensors.index.json"});
}

TEST(HfCheckpointTest, MissingParameterIsNamed) {
  std::unique_ptr<Model> model = RandomModel(1);
  TensorList tensors = ModelTensors(*model);
  const std::string missing = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
  std::erase_if(tensors, [&](const auto& t) { return t.first == missing; });
  const std::string dir = WriteCheckpoint("missing_parameter", tensors);
  ExpectLoadError(dir, {In(dir, "model.safetensors"), "lacks 1 of the model's", missing});
}

TEST(HfCheckpointTest, ShapeMismatchGivesExpectedAndFound) {
  std::unique_ptr<Model> model = RandomModel(1);
  TensorList tensors = ModelTensors(*model);
  const std::string name = "model.layers.0.self_attn.k_proj.weight";  // [8, 16]
  for (auto& [n, t] : tensors) {
    if (n == name) t = Tensor::Zeros({16, 8}, DType::kF32);
  }
  const std::string dir = WriteCheckpoint("shape", tensors);
  ExpectLoadError(dir, {name, "has shape [16, 8]", "expects [8, 16]"});

  // Nothing is loaded from a checkpoint that does not fit: the model keeps its weights.
  std::unique_ptr<Model> untouched = RandomModel(2);
  std::unique_ptr<Model> reference = RandomModel(2);
  EXPECT_FALSE(LoadHfWeights(dir, untouched.get()).ok());
  ExpectSameParameters(*reference, *untouched);
}

TEST(HfCheckpointTest, UnsupportedDTypeIsNamed) {
  std::unique_ptr<Model> model = RandomModel(1);
  TensorList tensors = ModelTensors(*model);
  const std::string name = "model.norm.weight";
  for (auto& [n, t] : tensors) {
    if (n == name) t = Tensor::Zeros({16}, DType::kI32);
  }
  const std::string dir = WriteCheckpoint("dtype", tensors);
  ExpectLoadError(dir, {name, "dtype I32", "not supported"});
}

TEST(HfCheckpointTest, UnexpectedTensorIsNamed) {
  std::unique_ptr<Model> model = RandomModel(1);
  TensorList tensors = ModelTensors(*model);
  // A third layer: the config says two.
  tensors.emplace_back("model.layers.2.input_layernorm.weight", Tensor::Zeros({16}, DType::kF32));
  const std::string dir = WriteCheckpoint("unexpected", tensors);
  ExpectLoadError(dir, {"model.layers.2.input_layernorm.weight", "does not have"});
}

TEST(HfCheckpointTest, IndexErrors) {
  std::unique_ptr<Model> model = RandomModel(1);
  const std::string dir = FreshDir("index");
  ASSERT_TRUE(SaveHfModel(dir, *model, 8192).ok());
  const std::string index_path = In(dir, "model.safetensors.index.json");
  absl::StatusOr<std::string> index_text = ReadFileToString(index_path);
  ASSERT_TRUE(index_text.ok());

  // A shard that the index names but that is not there.
  const std::string shard = "model-00002-of-" + FileNames(dir)[1].substr(15);
  ASSERT_TRUE(fs::exists(In(dir, shard))) << shard;
  fs::rename(In(dir, shard), In(dir, "moved_away"));
  ExpectLoadError(dir, {index_path, shard, "does not exist"});
  fs::rename(In(dir, "moved_away"), In(dir, shard));
  ASSERT_TRUE(LoadHfModel(dir).ok());

  // The index says a tensor is in a shard that does not hold it.
  absl::StatusOr<Json> index = ParseJson(*index_text);
  ASSERT_TRUE(index.ok());
  Json* entry = index->Find("weight_map")->Find("lm_head.weight");
  const std::string other = entry->as_string() == shard ? FileNames(dir)[1] : shard;
  *entry = Json(other);
  ASSERT_TRUE(WriteFileAtomically(index_path, index->Dump()).ok());
  ExpectLoadError(dir, {"lm_head.weight", other, "does not contain it"});

  // No weight_map at all.
  ASSERT_TRUE(WriteFileAtomically(index_path, R"({"metadata": {}})").ok());
  ExpectLoadError(dir, {index_path, "weight_map"});
}

TEST(HfCheckpointTest, FailedSaveLeavesNoConfig) {
  std::unique_ptr<Model> model = RandomModel(1);
  const std::string dir = FreshDir("failed_save");
  ASSERT_TRUE(SaveHfModel(dir, *model).ok());
  // The atomic writer's temporary name is taken by a directory: writing the weights fails.
  fs::create_directory(absl::StrCat(In(dir, "model.safetensors"), ".tmp.", ::getpid()));
  EXPECT_FALSE(SaveHfModel(dir, *model).ok());
  ExpectLoadError(dir, {"config.json", "is missing"});

  EXPECT_FALSE(SaveHfModel(FreshDir("bad_shard_size"), *model, 0).ok());
}

}  // namespace
}  // namespace moe
