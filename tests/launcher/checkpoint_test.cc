// Checkpoints in one process: the slice algebra that reshards (random
// partitions of random tensors read back through random regions, exactly),
// the trainer's save/load round trip (every tensor bit for bit, then the same
// next step), retention, a save that fails on a full file system or dies by
// SIGKILL at each point of the protocol, and every bad input of
// docs/RELIABILITY.md that does not need the moe-train binary, each with the
// words of its message and a check that nothing on disk changed.
#include "launcher/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "launcher/checkpoint_format.h"
#include "launcher/train_flags.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kVocab = 64;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
}

// Every file under `dir` with its contents: equal snapshots mean nothing changed.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    files[entry.path().string()] = entry.is_regular_file() ? ReadAll(entry.path()) : "<dir>";
  }
  return files;
}

// ---------------------------------------------------------------------------
// The slice algebra.

// A tensor whose element at global flat index g is g.
Tensor Iota(const Shape& shape, int64_t first = 0) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(first + i);
  return t;
}

// The box [offsets, offsets + shape) of Iota(global): the expected values.
Tensor IotaBox(const Shape& global, const std::vector<int64_t>& offsets, const Shape& shape) {
  Tensor t = Tensor::Empty(shape, DType::kF32);
  std::vector<int64_t> index(shape.size(), 0);
  for (int64_t i = 0; i < t.numel(); ++i) {
    int64_t g = 0;
    for (size_t d = 0; d < shape.size(); ++d) g = g * global[d] + offsets[d] + index[d];
    t.data<float>()[i] = static_cast<float>(g);
    for (int d = static_cast<int>(shape.size()) - 1; d >= 0 && ++index[d] == shape[d]; --d) {
      index[d] = 0;
    }
  }
  return t;
}

// Cut points 0 = c0 < c1 < ... = n: up to `parts` random intervals.
std::vector<int64_t> Cuts(int64_t n, int parts, const Philox& rng, uint64_t* counter) {
  std::vector<int64_t> cuts = {0};
  for (int i = 1; i < parts; ++i) cuts.push_back(rng.Block((*counter)++)[0] % (n + 1));
  cuts.push_back(n);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  return cuts;
}

// Writes Iota(global) as one logical tensor "t", split over three shard files
// by a random grid of boxes, each box either stored whole or cut into flat runs.
void WriteRandomPartition(const std::string& dir, const Shape& global, const Philox& rng,
                          uint64_t* counter) {
  std::vector<std::vector<int64_t>> cuts;
  for (int64_t size : global) cuts.push_back(Cuts(size, 3, rng, counter));
  std::vector<std::vector<ShardTensor>> files(3);
  std::vector<size_t> interval(global.size(), 0);
  while (true) {
    std::vector<int64_t> offsets;
    Shape shape;
    for (size_t d = 0; d < global.size(); ++d) {
      offsets.push_back(cuts[d][interval[d]]);
      shape.push_back(cuts[d][interval[d] + 1] - cuts[d][interval[d]]);
    }
    const Tensor box = IotaBox(global, offsets, shape);
    const TensorSlice slice = TensorSlice::Box(global, offsets);
    if (rng.Block((*counter)++)[0] % 2 == 0) {
      files[rng.Block((*counter)++)[0] % 3].push_back({"t", slice, box});
    } else {
      const std::vector<int64_t> runs = Cuts(box.numel(), 3, rng, counter);
      for (size_t r = 0; r + 1 < runs.size(); ++r) {
        files[rng.Block((*counter)++)[0] % 3].push_back(
            {"t", TensorSlice::FlatRun(slice, shape, runs[r]),
             box.Reshape({box.numel()}).Slice(runs[r], runs[r + 1]).Clone()});
      }
    }
    int d = static_cast<int>(global.size()) - 1;
    while (d >= 0 && ++interval[d] + 1 == cuts[d].size()) interval[d--] = 0;
    if (d < 0) break;
  }
  // Safetensors names are unique per file: extra pieces of "t" in one file
  // go to a file of their own.
  std::vector<std::vector<ShardTensor>> unique_files;
  for (auto& pieces : files) {
    for (ShardTensor& piece : pieces) unique_files.push_back({piece});
  }
  absl::StatusOr<std::string> temp = BeginCheckpointSave(dir, 5);
  ASSERT_TRUE(temp.ok()) << temp.status();
  Json metadata = Json::MakeObject({{"format", kCheckpointFormatName},
                                    {"format_version", kCheckpointFormatVersion},
                                    {"iteration", 5}});
  Json names = Json::MakeArray();
  for (size_t f = 0; f < unique_files.size(); ++f) {
    ASSERT_TRUE(WriteShardFile(*temp + "/" + ShardFileName(static_cast<int>(f)), unique_files[f], 5,
                               static_cast<int>(f))
                    .ok());
    names.Append(ShardFileName(static_cast<int>(f)));
  }
  metadata.Set("files", std::move(names));
  ASSERT_TRUE(CommitCheckpointSave(dir, 5, *temp, metadata, 0).ok());
}

// 30 random tensors of rank 1 to 3, each partitioned at random into boxes and
// flat runs, read back through 10 random boxes and 10 random flat runs of
// random boxes, in f32 and (converted) f64: every element exact.
TEST(CheckpointSliceTest, RandomPartitionsReadBackThroughRandomRegions) {
  const std::string root = testing::MakeTestDir("checkpoint_slices");
  const Philox rng(2024, 0);
  uint64_t counter = 0;
  for (int trial = 0; trial < 30; ++trial) {
    const std::string dir = root + "/" + std::to_string(trial);
    Shape global;
    const int rank = 1 + static_cast<int>(rng.Block(counter++)[0] % 3);
    for (int d = 0; d < rank; ++d) global.push_back(1 + rng.Block(counter++)[0] % 7);
    WriteRandomPartition(dir, global, rng, &counter);
    absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(dir);
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (int query = 0; query < 20; ++query) {
      std::vector<int64_t> offsets;
      Shape shape;
      for (int64_t size : global) {
        const int64_t lo = rng.Block(counter++)[0] % size;
        offsets.push_back(lo);
        shape.push_back(1 + rng.Block(counter++)[0] % (size - lo));
      }
      const Tensor expected = IotaBox(global, offsets, shape);
      TensorSlice region = TensorSlice::Box(global, offsets);
      Tensor want = expected;
      if (query >= 10) {
        const int64_t begin = rng.Block(counter++)[0] % expected.numel();
        const int64_t end = begin + 1 + rng.Block(counter++)[0] % (expected.numel() - begin);
        region = TensorSlice::FlatRun(region, shape, begin);
        want = expected.Reshape({expected.numel()}).Slice(begin, end).Clone();
      }
      for (DType dtype : {DType::kF32, DType::kF64}) {
        Tensor out = Tensor::Zeros(want.shape(), dtype);
        ASSERT_TRUE(reader->Read("t", region, &out).ok()) << "trial " << trial;
        const Tensor got = out.Cast(DType::kF32);
        for (int64_t i = 0; i < want.numel(); ++i) {
          ASSERT_EQ(got.data<float>()[i], want.data<float>()[i])
              << "trial " << trial << " query " << query << " element " << i << " of "
              << ShapeToString(global);
        }
      }
    }
  }
  if (!HasFailure()) fs::remove_all(root);
}

// Writes the pieces (one file each) of tensor "t" [4, 4] as a checkpoint.
absl::Status WritePieces(const std::string& dir, const std::vector<ShardTensor>& pieces) {
  absl::StatusOr<std::string> temp = BeginCheckpointSave(dir, 1);
  if (!temp.ok()) return temp.status();
  Json names = Json::MakeArray();
  for (size_t f = 0; f < pieces.size(); ++f) {
    const int rank = static_cast<int>(f);
    if (absl::Status s = WriteShardFile(*temp + "/" + ShardFileName(rank), {pieces[f]}, 1, rank);
        !s.ok()) {
      return s;
    }
    names.Append(ShardFileName(rank));
  }
  return CommitCheckpointSave(dir, 1, *temp,
                              Json::MakeObject({{"format", kCheckpointFormatName},
                                                {"format_version", kCheckpointFormatVersion},
                                                {"iteration", 1},
                                                {"files", std::move(names)}}),
                              0);
}

TEST(CheckpointSliceTest, UncoveredElementsAndOverlappingPiecesAreErrors) {
  const std::string root = testing::MakeTestDir("checkpoint_coverage");
  const Shape global = {4, 4};
  // Rows 0-1 and 3: row 2 is missing.
  ASSERT_TRUE(
      WritePieces(root + "/gap",
                  {{"t", TensorSlice::Box(global, {0, 0}), IotaBox(global, {0, 0}, {2, 4})},
                   {"t", TensorSlice::Box(global, {3, 0}), IotaBox(global, {3, 0}, {1, 4})}})
          .ok());
  absl::StatusOr<CheckpointReader> gap = CheckpointReader::Open(root + "/gap");
  ASSERT_TRUE(gap.ok()) << gap.status();
  Tensor out = Tensor::Empty(global, DType::kF32);
  const absl::Status missing = gap->Read("t", TensorSlice::Whole(global), &out);
  EXPECT_NE(missing.message().find("holds only 12 of the 16 elements of tensor \"t\""),
            std::string::npos)
      << missing;
  Tensor row = Tensor::Empty({1, 4}, DType::kF32);
  EXPECT_TRUE(gap->Read("t", TensorSlice::Box(global, {3, 0}), &row).ok());
  const absl::Status shape = gap->Read("t", TensorSlice::Whole({4, 5}), &out);
  EXPECT_NE(shape.message().find("has shape [4, 4], but this model's is [4, 5]"), std::string::npos)
      << shape;

  ASSERT_TRUE(
      WritePieces(root + "/overlap",
                  {{"t", TensorSlice::Box(global, {0, 0}), IotaBox(global, {0, 0}, {3, 4})},
                   {"t", TensorSlice::Box(global, {2, 0}), IotaBox(global, {2, 0}, {2, 4})}})
          .ok());
  const absl::Status overlap = CheckpointReader::Open(root + "/overlap").status();
  EXPECT_NE(overlap.message().find("is stored twice, overlapping"), std::string::npos) << overlap;

  const absl::Status outside =
      WritePieces(root + "/outside",
                  {{"t", TensorSlice::Box(global, {3, 0}), IotaBox(global, {0, 0}, {2, 4})}});
  ASSERT_TRUE(outside.ok());
  const absl::Status fits = CheckpointReader::Open(root + "/outside").status();
  EXPECT_NE(fits.message().find("does not fit in the global shape [4, 4]"), std::string::npos)
      << fits;
  if (!HasFailure()) fs::remove_all(root);
}

// ---------------------------------------------------------------------------
// The trainer.

class CheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_dir_ = new std::string(testing::MakeTestDir("checkpoint_test_data"));
    testing::WriteFakeDataset(*data_dir_ + "/train", 40, 50, kVocab, /*seed=*/1);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*data_dir_);
    delete data_dir_;
    data_dir_ = nullptr;
  }

  void SetUp() override {
    dir_ = testing::MakeTestDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  // Checkpoints are large: kept only when the test failed, to look at.
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  static TrainerOptions Options(bool distributed = false) {
    TrainerOptions o;
    ModelConfig& c = o.model;
    c.vocab_size = kVocab;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.num_local_experts = 4;
    c.num_experts_per_tok = 2;
    c.max_position_embeddings = 16;
    c.rope_theta = 1e4;
    c.router_aux_loss_coef = 1e-2;
    c.router_z_loss_coef = 1e-3;
    o.seq_length = 16;
    o.micro_batch_size = 2;
    o.global_batch_size = 4;
    o.train_iters = 10;
    o.lr.max_lr = 1e-2;
    o.lr.min_lr = 1e-3;
    o.lr.warmup_iters = 2;
    o.lr.decay_iters = 10;
    o.adam.weight_decay = 0.1;
    o.clip_grad = 0.5;
    o.seed = 7;
    o.data_path = *data_dir_ + "/train";
    o.log_interval = 1;
    o.use_distributed_optimizer = distributed;
    o.ddp_bucket_size = 1000;  // several buckets whose chunks cut parameters
    return o;
  }

  static std::unique_ptr<Trainer> MakeTrainer(const TrainerOptions& options) {
    EXPECT_TRUE(ValidateTrainerOptions(options).ok()) << ValidateTrainerOptions(options);
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
    EXPECT_TRUE(trainer.ok()) << trainer.status();
    return trainer.ok() ? std::move(*trainer) : nullptr;
  }

  // A trainer after `steps` steps, saved to dir_ (keep all).
  std::unique_ptr<Trainer> TrainAndSave(const TrainerOptions& options, int steps) {
    std::unique_ptr<Trainer> trainer = MakeTrainer(options);
    for (int s = 0; s < steps; ++s) {
      EXPECT_TRUE(trainer->Step().ok());
      EXPECT_TRUE(SaveCheckpoint(*trainer, dir_, 0).ok());
    }
    return trainer;
  }

  static void ExpectBitEqual(const Tensor& a, const Tensor& b, const std::string& what) {
    ASSERT_EQ(a.shape(), b.shape()) << what;
    ASSERT_EQ(a.nbytes(), b.nbytes()) << what;
    EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0) << what;
  }

  // The error of CheckCheckpointForRun or LoadCheckpoint on `load`, whichever
  // fails first; dir_ must not change.
  absl::Status LoadError(const std::string& load, const TrainerOptions& options) {
    const auto before = Snapshot(dir_);
    absl::Status status = CheckCheckpointForRun(load, options).status();
    if (status.ok()) {
      std::unique_ptr<Trainer> trainer = MakeTrainer(options);
      status = LoadCheckpoint(load, trainer.get());
    }
    EXPECT_EQ(Snapshot(dir_), before) << "a failed load changed " << dir_;
    return status;
  }

  std::string Shard(int iteration, int rank = 0) const {
    return dir_ + "/" + IterationDirName(iteration) + "/" + ShardFileName(rank);
  }

  static std::string* data_dir_;
  std::string dir_;
};

std::string* CheckpointTest::data_dir_ = nullptr;

#define EXPECT_MESSAGE(status, text)                                       \
  EXPECT_NE(std::string((status).message()).find(text), std::string::npos) \
      << "expected \"" << (text) << "\" in: " << (status).message()

// Every parameter and every optimizer tensor comes back bit for bit, with the
// step counters, and the next step of the loaded trainer equals the
// original's exactly; for the replicated and the distributed optimizer.
TEST_F(CheckpointTest, SaveLoadRoundTripIsBitExact) {
  for (bool distributed : {false, true}) {
    SetUp();
    const TrainerOptions options = Options(distributed);
    std::unique_ptr<Trainer> original = TrainAndSave(options, 3);
    std::unique_ptr<Trainer> loaded = MakeTrainer(options);
    ASSERT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok());
    EXPECT_EQ(loaded->step(), 3);
    EXPECT_EQ(loaded->optimizer_step(), original->optimizer_step());
    const std::vector<Parameter*> a = original->model().Parameters();
    const std::vector<Parameter*> b = loaded->model().Parameters();
    for (size_t i = 0; i < a.size(); ++i) ExpectBitEqual(a[i]->value, b[i]->value, a[i]->name);
    if (!distributed) {
      for (size_t i = 0; i < a.size(); ++i) {
        ExpectBitEqual(original->optimizer()->state(i).exp_avg,
                       loaded->optimizer()->state(i).exp_avg, a[i]->name + " exp_avg");
        ExpectBitEqual(original->optimizer()->state(i).exp_avg_sq,
                       loaded->optimizer()->state(i).exp_avg_sq, a[i]->name + " exp_avg_sq");
      }
    } else {
      auto pa = original->distributed_optimizer()->ShardPieces();
      auto pb = loaded->distributed_optimizer()->ShardPieces();
      ASSERT_EQ(pa.size(), pb.size());
      for (size_t i = 0; i < pa.size(); ++i) {
        ExpectBitEqual(pa[i].master, pb[i].master, "master");
        ExpectBitEqual(pa[i].exp_avg, pb[i].exp_avg, "exp_avg");
        ExpectBitEqual(pa[i].exp_avg_sq, pb[i].exp_avg_sq, "exp_avg_sq");
      }
    }
    for (int s = 0; s < 2; ++s) {
      absl::StatusOr<StepStats> x = original->Step();
      absl::StatusOr<StepStats> y = loaded->Step();
      ASSERT_TRUE(x.ok() && y.ok());
      EXPECT_EQ(x->loss, y->loss) << "distributed " << distributed;
      EXPECT_EQ(x->grad_norm, y->grad_norm);
      EXPECT_EQ(x->lr, y->lr);
    }
  }
}

// A checkpoint of the replicated optimizer resumes under the distributed one
// and the other way round: the next losses agree to rounding.
TEST_F(CheckpointTest, OptimizerKindsLoadEachOther) {
  for (bool saved_distributed : {false, true}) {
    SetUp();
    std::unique_ptr<Trainer> original = TrainAndSave(Options(saved_distributed), 2);
    std::unique_ptr<Trainer> loaded = MakeTrainer(Options(!saved_distributed));
    ASSERT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok());
    for (int s = 0; s < 2; ++s) {
      absl::StatusOr<StepStats> x = original->Step();
      absl::StatusOr<StepStats> y = loaded->Step();
      ASSERT_TRUE(x.ok() && y.ok());
      EXPECT_NEAR(x->loss, y->loss, 1e-6 * std::abs(x->loss));
      EXPECT_NEAR(x->grad_norm, y->grad_norm, 1e-5 * x->grad_norm);
    }
  }
}

// keep = K leaves the newest K iterations up to the one saved; iterations
// above it (from a run that went further) stay; keep = 0 keeps all;
// leftovers of an interrupted save are removed by the next one.
TEST_F(CheckpointTest, RetentionKeepsTheNewestK) {
  std::unique_ptr<Trainer> trainer = MakeTrainer(Options());
  fs::create_directories(dir_ + "/iter_0000009");
  fs::create_directories(dir_ + "/iter_0000001.tmp");
  for (int s = 1; s <= 4; ++s) {
    ASSERT_TRUE(trainer->Step().ok());
    absl::StatusOr<CheckpointSaveInfo> saved = SaveCheckpoint(*trainer, dir_, s < 4 ? 0 : 2);
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_EQ(saved->path, dir_ + "/" + IterationDirName(s));
    EXPECT_GT(saved->bytes, 0);
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names,
            (std::vector<std::string>{"iter_0000003", "iter_0000004", "iter_0000009", "latest"}));
  EXPECT_EQ(ReadAll(dir_ + "/latest"), "iter_0000004\n");
}

// Saving an iteration that exists (a resumed run passing the same step)
// replaces it whole.
TEST_F(CheckpointTest, SavingAnExistingIterationReplacesIt) {
  std::unique_ptr<Trainer> first = TrainAndSave(Options(), 2);
  TrainerOptions other = Options();
  other.lr.max_lr = 5e-3;  // different weights at step 2
  std::unique_ptr<Trainer> second = MakeTrainer(other);
  ASSERT_TRUE(second->Step().ok());
  ASSERT_TRUE(second->Step().ok());
  ASSERT_TRUE(SaveCheckpoint(*second, dir_, 0).ok());
  std::unique_ptr<Trainer> loaded = MakeTrainer(other);
  ASSERT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok());
  ExpectBitEqual(loaded->model().Parameters()[0]->value, second->model().Parameters()[0]->value,
                 "embed_tokens");
  EXPECT_FALSE(fs::exists(dir_ + "/iter_0000002.tmp"));
}

// A write that fails midway (RLIMIT_FSIZE makes write() fail with EFBIG, as
// a full disk fails it with ENOSPC) fails the save with the file named and
// leaves the previous checkpoint as latest, loadable, with no temporary left.
TEST_F(CheckpointTest, AFailedWriteKeepsThePreviousCheckpoint) {
  std::unique_ptr<Trainer> trainer = TrainAndSave(Options(), 1);
  ASSERT_TRUE(trainer->Step().ok());
  std::signal(SIGXFSZ, SIG_IGN);
  rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit small = old_limit;
  small.rlim_cur = 20'000;  // a shard is ~150 kB
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const absl::StatusOr<CheckpointSaveInfo> saved = SaveCheckpoint(*trainer, dir_, 2);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  ASSERT_FALSE(saved.ok());
  EXPECT_MESSAGE(saved.status(), "rank_00000.safetensors");
  EXPECT_MESSAGE(saved.status(), "/latest still names the previous checkpoint");
  EXPECT_EQ(ReadAll(dir_ + "/latest"), "iter_0000001\n");
  EXPECT_FALSE(fs::exists(dir_ + "/iter_0000002.tmp"));
  EXPECT_FALSE(fs::exists(dir_ + "/iter_0000002"));
  std::unique_ptr<Trainer> loaded = MakeTrainer(Options());
  EXPECT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok());
  EXPECT_EQ(loaded->step(), 1);
}

// SIGKILL (what kill -9 sends) at each point of the save protocol: latest
// still names a complete checkpoint that loads, and the next save cleans up.
TEST_F(CheckpointTest, KilledAtAnyPointOfTheSaveLatestStillLoads) {
  // "fast" (fork, no exec): the child must see this process's directory and trainer.
  GTEST_FLAG_SET(death_test_style, "fast");
  const struct {
    const char* point;
    int latest;  // the iteration latest names after the kill
  } kPoints[] = {{"shards_written", 1}, {"renamed", 1}, {"latest_written", 2}};
  for (const auto& [point, latest] : kPoints) {
    SetUp();
    std::unique_ptr<Trainer> trainer = TrainAndSave(Options(), 1);
    ASSERT_TRUE(trainer->Step().ok());
    EXPECT_EXIT(
        {
          setenv("MOE_CHECKPOINT_CRASH_AT", point, 1);
          (void)SaveCheckpoint(*trainer, dir_, 1);
          std::exit(0);
        },
        ::testing::KilledBySignal(SIGKILL), "MOE_CHECKPOINT_CRASH_AT")
        << point;
    EXPECT_EQ(ReadAll(dir_ + "/latest"), IterationDirName(latest) + "\n") << point;
    std::unique_ptr<Trainer> loaded = MakeTrainer(Options());
    ASSERT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok()) << point;
    EXPECT_EQ(loaded->step(), latest);
    ASSERT_TRUE(SaveCheckpoint(*trainer, dir_, 1).ok());
    for (const auto& entry : fs::directory_iterator(dir_)) {
      const std::string name = entry.path().filename().string();
      EXPECT_TRUE(name == "latest" || name == "iter_0000002") << point << " left " << name;
    }
  }
}

// ---------------------------------------------------------------------------
// Bad inputs (docs/RELIABILITY.md): each gives a message naming the file or
// flag and a fix, and changes nothing on disk.

TEST_F(CheckpointTest, MissingDirectoryOrLatest) {
  const absl::Status none = LoadError(dir_ + "/nowhere", Options());
  EXPECT_MESSAGE(none, "--load=" + dir_ + "/nowhere: " + dir_ + "/nowhere does not exist");
  const absl::Status empty = LoadError(dir_, Options());
  EXPECT_MESSAGE(empty, "holds no checkpoint: it has no file named latest");
  TrainAndSave(Options(), 2);
  fs::remove(dir_ + "/latest");
  const absl::Status no_latest = LoadError(dir_, Options());
  EXPECT_MESSAGE(no_latest, "It holds iter_0000001, iter_0000002");
  EXPECT_MESSAGE(no_latest, "--load=" + dir_ + "/iter_0000002");
  // An iteration directory loads directly.
  EXPECT_TRUE(LoadError(dir_ + "/iter_0000001", Options()).ok());
}

TEST_F(CheckpointTest, DamagedLatestOrMetadata) {
  TrainAndSave(Options(), 2);
  WriteAll(dir_ + "/latest", "garbage\n");
  EXPECT_MESSAGE(LoadError(dir_, Options()), "not an iteration directory name");
  WriteAll(dir_ + "/latest", "iter_0000007\n");
  const absl::Status gone = LoadError(dir_, Options());
  EXPECT_MESSAGE(gone, "names iter_0000007, but");
  EXPECT_MESSAGE(gone, "load another checkpoint instead, e.g. --load=" + dir_ + "/iter_0000002");
  WriteAll(dir_ + "/latest", "iter_0000002\n");
  const std::string metadata = dir_ + "/iter_0000002/metadata.json";
  const std::string good = ReadAll(metadata);
  WriteAll(metadata, good.substr(0, good.size() / 2));
  const absl::Status truncated = LoadError(dir_, Options());
  EXPECT_MESSAGE(truncated, "metadata.json");
  EXPECT_MESSAGE(truncated, "--load=" + dir_ + "/iter_0000001");
  std::string newer = good;
  newer.replace(newer.find("\"format_version\": 1"), 19, "\"format_version\": 9");
  WriteAll(metadata, newer);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "by a newer moe-train");
  fs::remove(metadata);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "metadata.json is missing");
}

TEST_F(CheckpointTest, DamagedShardFiles) {
  TrainAndSave(Options(), 2);
  const std::string shard = Shard(2);
  const std::string good = ReadAll(shard);
  fs::remove(shard);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "rank_00000.safetensors is missing");
  WriteAll(shard, good.substr(0, good.size() - 1000));
  const absl::Status truncated = LoadError(dir_, Options());
  EXPECT_MESSAGE(truncated, "checkpoint shard " + shard + " is damaged");
  EXPECT_MESSAGE(truncated, "--load=" + dir_ + "/iter_0000001");
  std::string flipped = good;
  flipped[flipped.size() - 100] ^= 0x40;  // inside the last tensor's bytes
  WriteAll(shard, flipped);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "fails its checksum");
  std::string header = good;
  header[12] = '#';  // inside the JSON header
  WriteAll(shard, header);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "is damaged");
  fs::copy_file(Shard(1), shard, fs::copy_options::overwrite_existing);
  EXPECT_MESSAGE(LoadError(dir_, Options()), "it belongs to another save (iteration 1");
}

// A shard that lacks a tensor, or holds one with another shape.
TEST_F(CheckpointTest, MissingOrMisshapenTensors) {
  std::unique_ptr<Trainer> trainer = TrainAndSave(Options(), 1);
  std::vector<ShardTensor> tensors;
  for (const Parameter* p : trainer->model().Parameters()) {
    if (p->name != "model.norm.weight") {
      tensors.push_back({p->name, TensorSlice::Whole(p->value.shape()), p->value});
    }
  }
  ASSERT_TRUE(WriteShardFile(Shard(1), tensors, 1, 0).ok());
  const absl::Status missing = LoadError(dir_, Options());
  EXPECT_MESSAGE(missing, "lacks 1 tensors this run needs: model.norm.weight");
  tensors.push_back({"model.norm.weight", TensorSlice::Whole({16}), Iota({16})});
  ASSERT_TRUE(WriteShardFile(Shard(1), tensors, 1, 0).ok());
  EXPECT_MESSAGE(LoadError(dir_, Options()),
                 "holds model.norm.weight as [16], but the model's is [32]");
}

// The run's flags must describe the checkpoint's model and data position.
TEST_F(CheckpointTest, ConfigMismatchNamesTheFlag) {
  TrainAndSave(Options(), 2);
  TrainerOptions wider = Options();
  wider.model.hidden_size = 64;
  EXPECT_MESSAGE(LoadError(dir_, wider),
                 "has hidden_size = 32, but this run has --hidden_size=64; pass --hidden_size=32");
  TrainerOptions experts = Options();
  experts.model.num_local_experts = 8;
  EXPECT_MESSAGE(LoadError(dir_, experts), "pass --num_experts=4");
  TrainerOptions seed = Options();
  seed.seed = 8;
  EXPECT_MESSAGE(LoadError(dir_, seed), "pass --seed=7");
  TrainerOptions batch = Options();
  batch.global_batch_size = 8;
  EXPECT_MESSAGE(LoadError(dir_, batch), "pass --global_batch_size=4");
  TrainerOptions short_run = Options();
  short_run.train_iters = 1;
  short_run.lr.decay_iters = 1;
  short_run.lr.warmup_iters = 0;
  EXPECT_MESSAGE(LoadError(dir_, short_run), "is at step 2, past --train_iters=1");
  // What may change on resume: the layout, the loss coefficients.
  TrainerOptions changed = Options(/*distributed=*/true);
  changed.model.router_aux_loss_coef = 0;
  EXPECT_TRUE(LoadError(dir_, changed).ok());
}

TEST_F(CheckpointTest, UnwritableSaveDirectory) {
  std::unique_ptr<Trainer> trainer = MakeTrainer(Options());
  WriteAll(dir_ + "/file", "x");
  const absl::Status status = SaveCheckpoint(*trainer, dir_ + "/file", 2).status();
  EXPECT_MESSAGE(status, "--save=" + dir_ + "/file: cannot create the checkpoint directory");
}

// A model checkpoint (moe-convert --from_hf's) has no optimizer state: it
// loads at step 0 with fresh optimizer state, and never overwrites one.
TEST_F(CheckpointTest, ModelCheckpointLoadsWithFreshOptimizer) {
  std::unique_ptr<Trainer> source = MakeTrainer(Options());
  ASSERT_TRUE(source->Step().ok());
  ASSERT_TRUE(SaveModelCheckpoint(dir_, source->model(), "test").ok());
  const absl::Status again = SaveModelCheckpoint(dir_, source->model(), "test").status();
  EXPECT_MESSAGE(again, "already holds a checkpoint");
  for (bool distributed : {false, true}) {
    std::unique_ptr<Trainer> loaded = MakeTrainer(Options(distributed));
    ASSERT_TRUE(LoadCheckpoint(dir_, loaded.get()).ok());
    EXPECT_EQ(loaded->step(), 0);
    EXPECT_EQ(loaded->optimizer_step(), 0);
    ExpectBitEqual(loaded->model().Parameters()[1]->value, source->model().Parameters()[1]->value,
                   "a loaded weight");
    ASSERT_TRUE(loaded->Step().ok());
  }
  absl::StatusOr<std::unique_ptr<Model>> model = LoadModelFromCheckpoint(dir_);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectBitEqual((*model)->Parameters().back()->value, source->model().Parameters().back()->value,
                 "lm_head");
}

}  // namespace
}  // namespace moe
