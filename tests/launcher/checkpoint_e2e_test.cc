// Checkpoints through the real binaries, as a user runs them: moe-train
// stopped (--exit_interval, SIGTERM, kill -9 during saves) and resumed with
// --load gives exactly the losses of an uninterrupted run; a checkpoint saved
// on 2 ranks (distributed optimizer, or expert parallel) resumes on 1, 2 and
// 4 ranks with the same next losses (1e-5 relative, the layout-invariance
// tolerance); flag errors; moe-convert both ways and --init_from_hf.
//
// The model is layout_invariance_test's (2 layers, hidden 32, 4 experts top-2,
// aux and z losses, seq 16, global batch 8, small gradient buckets). The
// multi-rank cases run only in a build with MPI.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/json.h"
#include "launcher/checkpoint.h"
#include "launcher/checkpoint_format.h"
#include "tests/launcher/fake_dataset.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

const char* const kCompared[] = {"loss", "lm_loss", "aux_loss", "z_loss", "grad_norm", "lr"};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<Json> ReadLog(const std::string& path) {
  std::ifstream in(path);
  std::vector<Json> records;
  std::string line;
  while (std::getline(in, line)) {
    absl::StatusOr<Json> record = ParseJson(line, path);
    if (record.ok()) records.push_back(*record);
  }
  return records;
}

struct Result {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell with its output captured.
Result Shell(const std::string& command, const std::string& output_path) {
  const int status = std::system((command + " > " + output_path + " 2>&1").c_str());
  Result result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.output = ReadAll(output_path);
  return result;
}

// Starts argv[0] with its output to `output_path`; returns the pid.
pid_t Spawn(const std::vector<std::string>& args, const std::string& output_path) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execvp(argv[0], argv.data());  // mpirun may be named without a path
    _exit(127);
  }
  return pid;
}

int WaitExitCode(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Polls until `done` or 60 s pass.
bool WaitFor(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class CheckpointE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new std::string(testing::MakeTestDir("checkpoint_e2e_data") + "/data");
    testing::WriteFakeDataset(*data_, 60, 100, 64, 11);
  }
  static void TearDownTestSuite() {
    fs::remove_all(fs::path(*data_).parent_path());
    delete data_;
    data_ = nullptr;
  }
  void SetUp() override {
    dir_ = testing::MakeTestDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  // Checkpoints are large: kept only when the test failed, to look at.
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  static std::string ModelFlags() {
    return "--num_layers=2 --hidden_size=32 --ffn_hidden_size=48 --num_attention_heads=4 "
           "--num_query_groups=2 --num_experts=4 --moe_router_topk=2 --moe_aux_loss_coeff=1e-2 "
           "--moe_z_loss_coeff=1e-3 --vocab_size=64 --seq_length=16 --rotary_base=10000";
  }
  // Training flags; the LR schedule decays over 12 steps whatever --train_iters is.
  static std::string TrainFlags(int train_iters) {
    return absl::StrCat(ModelFlags(),
                        " --micro_batch_size=1 --global_batch_size=8 --lr=1e-2 --min_lr=1e-3 "
                        "--lr_warmup_iters=2 --lr_decay_iters=12 --weight_decay=0.1 "
                        "--clip_grad=0.5 --seed=7 --threads=1 --log_interval=1 "
                        "--ddp_bucket_size=1000 --train_iters=",
                        train_iters, " --data_path=", *data_);
  }

  // Runs moe-train on `ranks` ranks (0: no mpirun); `name` names its log and output.
  Result Train(const std::string& name, int ranks, const std::string& flags) {
    std::string command;
    if (ranks > 0) {
#ifdef MOE_MPIEXEC
      command = absl::StrCat(MOE_MPIEXEC, " -n ", ranks, " ");
#else
      ADD_FAILURE() << "no MPI in this build";
#endif
    }
    absl::StrAppend(&command, MOE_TRAIN_BIN, " ", flags, " --log_jsonl=", Log(name));
    return Shell(command, dir_ + "/" + name + ".out");
  }
  std::string Log(const std::string& name) const { return dir_ + "/" + name + ".jsonl"; }

  // Steps [first, first + count) of log `b` against steps [0, count) of `a`,
  // exactly (tolerance 0) or relatively.
  static void ExpectSameSteps(const std::vector<Json>& a, size_t first, const std::vector<Json>& b,
                              double tolerance, const std::string& what) {
    ASSERT_LE(first + b.size(), a.size()) << what;
    for (size_t s = 0; s < b.size(); ++s) {
      EXPECT_EQ(b[s].Find("step")->as_int(), a[first + s].Find("step")->as_int()) << what;
      for (const char* key : kCompared) {
        const double want = a[first + s].Find(key)->as_double();
        const double got = b[s].Find(key)->as_double();
        if (tolerance == 0) {
          EXPECT_EQ(got, want) << what << " step " << first + s + 1 << " " << key;
        } else {
          EXPECT_LE(std::abs(got - want), tolerance * std::abs(want))
              << what << " step " << first + s + 1 << " " << key << ": " << got << " vs " << want;
        }
      }
    }
  }

  static std::string* data_;
  std::string dir_;
};

std::string* CheckpointE2eTest::data_ = nullptr;

// 6 steps in one run, or 3 (--exit_interval=3 saves and stops) and 3 more
// after --load in a new process: the same losses, bit for bit.
TEST_F(CheckpointE2eTest, ResumeGivesTheUninterruptedLosses) {
  struct Case {
    const char* name;
    int ranks;
    const char* flags;
  };
  std::vector<Case> cases = {
      {"one_rank", 0, ""},
      // The routers' expert bias is state outside the optimizer: it must
      // come back too.
      {"expert_bias", 0,
       " --moe_router_score_function=sigmoid --moe_router_enable_expert_bias "
       "--moe_router_bias_update_rate=1e-2"}};
#ifdef MOE_MPIEXEC
  cases.push_back({"dp2_distopt", 2, " --use_distributed_optimizer"});
#endif
  for (const Case& c : cases) {
    const std::string ckpt = dir_ + "/" + c.name;
    const std::string base = TrainFlags(6) + c.flags;
    const std::string name = c.name;
    Result full = Train(name + "_full", c.ranks, base);
    ASSERT_EQ(full.exit_code, 0) << full.output;
    Result first = Train(name + "_first", c.ranks, base + " --save=" + ckpt + " --exit_interval=3");
    ASSERT_EQ(first.exit_code, 0) << first.output;
    EXPECT_NE(first.output.find("stopping after step 3 of 6 (--exit_interval)"), std::string::npos)
        << first.output;
    EXPECT_EQ(ReadAll(ckpt + "/latest"), "iter_0000003\n");
    Result rest = Train(name + "_rest", c.ranks, base + " --load=" + ckpt + " --save=" + ckpt);
    ASSERT_EQ(rest.exit_code, 0) << rest.output;
    EXPECT_NE(rest.output.find("resume    " + ckpt + "/iter_0000003: step 3"), std::string::npos)
        << rest.output;
    const std::vector<Json> reference = ReadLog(Log(name + "_full"));
    ASSERT_EQ(reference.size(), 6u);
    ExpectSameSteps(reference, 0, ReadLog(Log(name + "_first")), 0, name + " before the stop");
    const std::vector<Json> resumed = ReadLog(Log(name + "_rest"));
    ASSERT_EQ(resumed.size(), 3u) << rest.output;
    ExpectSameSteps(reference, 3, resumed, 0, name + " after --load");
    // The final save at step 6 with the default --save_keep=2.
    EXPECT_EQ(ReadAll(ckpt + "/latest"), "iter_0000006\n");
    EXPECT_TRUE(fs::exists(ckpt + "/iter_0000003"));
  }
}

#ifdef MOE_MPIEXEC
// Saved on 2 ranks with the distributed optimizer (flat shards of the
// optimizer state over 2 DP ranks), on 2 ranks with expert parallelism
// (each rank writes its own experts), and on TP 4 (vocab, head and
// sequence slices; the key/value heads replicated on 2 ranks each, written
// once) with the distributed optimizer: each resumes on 1 rank, on 2 and 4
// data-parallel ranks (with and without the distributed optimizer), on
// EP 2 x DP 2 with the distributed optimizer and on TP 2 x DP 2, and the next
// 3 steps match the saving layout's uninterrupted run within the
// layout-invariance tolerance.
TEST_F(CheckpointE2eTest, ACheckpointResumesUnderEveryLayout) {
  struct Layout {
    const char* name;
    int ranks;
    const char* flags;
  };
  const Layout kSaved[] = {
      {"saved_dp2_distopt", 2, " --use_distributed_optimizer"},
      {"saved_ep2", 2, " --expert_model_parallel_size=2"},
      {"saved_tp4_distopt", 4,
       " --tensor_model_parallel_size=4 --sequence_parallel --use_distributed_optimizer"},
      // Issue 7's case: TP 2 x EP 2 (experts split over EP and folded over
      // TP x DP, attention over TP), with ETP 2 for good measure.
      {"saved_tp2_ep2_etp2", 4,
       " --tensor_model_parallel_size=2 --sequence_parallel --expert_model_parallel_size=2 "
       "--expert_tensor_parallel_size=2"}};
  const Layout kLoaded[] = {
      {"one_rank", 0, ""},
      {"dp2", 2, ""},
      {"dp4", 4, ""},
      {"dp4_distopt", 4, " --use_distributed_optimizer"},
      {"ep2_dp2_distopt", 4, " --expert_model_parallel_size=2 --use_distributed_optimizer"},
      {"tp2_dp2", 4, " --tensor_model_parallel_size=2 --sequence_parallel"}};
  const std::string base = TrainFlags(6);
  for (const Layout& saved : kSaved) {
    const std::string name = saved.name;
    const std::string ckpt = dir_ + "/" + name;
    ASSERT_EQ(Train(name + "_full", saved.ranks, base + saved.flags).exit_code, 0);
    Result first =
        Train(name, saved.ranks, base + saved.flags + " --save=" + ckpt + " --exit_interval=3");
    ASSERT_EQ(first.exit_code, 0) << first.output;
    const std::vector<Json> reference = ReadLog(Log(name + "_full"));
    for (const Layout& loaded : kLoaded) {
      const std::string run_name = name + "_to_" + loaded.name;
      Result run = Train(run_name, loaded.ranks, base + loaded.flags + " --load=" + ckpt);
      ASSERT_EQ(run.exit_code, 0) << run_name << "\n" << run.output;
      const std::vector<Json> resumed = ReadLog(Log(run_name));
      ASSERT_EQ(resumed.size(), 3u) << run.output;
      ExpectSameSteps(reference, 3, resumed, 1e-5, run_name);
    }
  }
}

// SIGTERM to one rank of two: both finish the step, agree to stop, save, exit 0.
TEST_F(CheckpointE2eTest, SigtermToOneRankStopsEveryRank) {
  const std::string ckpt = dir_ + "/ckpt";
  std::vector<std::string> args = absl::StrSplit(MOE_MPIEXEC, ' ', absl::SkipEmpty());
  for (const std::string& a : {std::string("-n"), std::string("2"), std::string(MOE_TRAIN_BIN)}) {
    args.push_back(a);
  }
  for (absl::string_view flag :
       absl::StrSplit(TrainFlags(5000) + " --save=" + ckpt + " --log_jsonl=" + Log("run"), ' ',
                      absl::SkipEmpty())) {
    args.emplace_back(flag);
  }
  const pid_t mpirun = Spawn(args, dir_ + "/run.out");
  ASSERT_TRUE(WaitFor([&] { return ReadLog(Log("run")).size() >= 2; }))
      << ReadAll(dir_ + "/run.out");
  // Rank 1: the child of mpirun whose environment says so.
  pid_t rank1 = -1;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string stat = ReadAll(entry.path().string() + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    const std::vector<std::string> fields = absl::StrSplit(stat.substr(paren + 2), ' ');
    if (fields.size() < 2 || fields[1] != std::to_string(mpirun)) continue;
    const std::string env = ReadAll(entry.path().string() + "/environ");
    if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) {
      rank1 = std::stoi(entry.path().filename().string());
    }
  }
  ASSERT_GT(rank1, 0) << "rank 1 of mpirun " << mpirun << " not found";
  ASSERT_EQ(kill(rank1, SIGTERM), 0);
  EXPECT_EQ(WaitExitCode(mpirun), 0) << ReadAll(dir_ + "/run.out");
  const std::vector<Json> log = ReadLog(Log("run"));
  const std::string output = ReadAll(dir_ + "/run.out");
  EXPECT_NE(output.find("a stop was requested: SIGTERM or SIGINT"), std::string::npos) << output;
  EXPECT_EQ(ReadAll(ckpt + "/latest"), IterationDirName(log.size()) + "\n");
}
#endif

// SIGTERM mid-run: the step finishes, a checkpoint is saved, exit 0; --load
// then gives the uninterrupted run's losses exactly.
TEST_F(CheckpointE2eTest, SigtermSavesAndResumesExactly) {
  const std::string ckpt = dir_ + "/ckpt";
  std::vector<std::string> args = {MOE_TRAIN_BIN};
  for (absl::string_view flag :
       absl::StrSplit(TrainFlags(5000) + " --save=" + ckpt + " --log_jsonl=" + Log("signalled"),
                      ' ', absl::SkipEmpty())) {
    args.emplace_back(flag);
  }
  const pid_t pid = Spawn(args, dir_ + "/signalled.out");
  ASSERT_TRUE(WaitFor([&] { return ReadLog(Log("signalled")).size() >= 2; }));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  ASSERT_EQ(WaitExitCode(pid), 0) << ReadAll(dir_ + "/signalled.out");
  const size_t stopped = ReadLog(Log("signalled")).size();
  EXPECT_EQ(ReadAll(ckpt + "/latest"), IterationDirName(stopped) + "\n");
  EXPECT_NE(ReadAll(dir_ + "/signalled.out").find("moe-train: resume with --load=" + ckpt),
            std::string::npos);
  // The uninterrupted reference and the resumed run both stop 3 steps later.
  const std::string end = absl::StrCat(" --exit_interval=", stopped + 3);
  ASSERT_EQ(Train("full", 0, TrainFlags(5000) + end).exit_code, 0);
  Result resumed = Train("resumed", 0, TrainFlags(5000) + end + " --load=" + ckpt);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  ExpectSameSteps(ReadLog(Log("full")), stopped, ReadLog(Log("resumed")), 0, "after SIGTERM");
}

// kill -9 at random moments of a run that saves every step: latest always
// names a complete checkpoint whose every tensor passes its checksum, and
// moe-train resumes from it.
TEST_F(CheckpointE2eTest, KillNineDuringSavesLeavesLatestLoadable) {
  const std::string ckpt = dir_ + "/ckpt";
  // Wider than the other tests' model, so that a save takes a while.
  const std::string flags =
      TrainFlags(5000) +
      " --hidden_size=96 --ffn_hidden_size=192 --num_experts=8 --save_interval=1 --save=" + ckpt;
  std::vector<std::string> args = {MOE_TRAIN_BIN};
  for (absl::string_view flag : absl::StrSplit(flags, ' ', absl::SkipEmpty())) {
    args.emplace_back(flag);
  }
  int64_t last_iteration = -1;
  for (int trial = 0; trial < 5; ++trial) {
    const pid_t pid = Spawn(args, dir_ + "/killed.out");
    // A random moment after the first save of this trial.
    ASSERT_TRUE(WaitFor([&] {
      absl::StatusOr<CheckpointReader> r = CheckpointReader::Open(ckpt);
      return r.ok() && r->iteration() > last_iteration;
    })) << ReadAll(dir_ + "/killed.out");
    std::this_thread::sleep_for(std::chrono::milliseconds(37 * trial + 5));
    kill(pid, SIGKILL);
    EXPECT_EQ(WaitExitCode(pid), 128 + SIGKILL);
    absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(ckpt);
    ASSERT_TRUE(reader.ok()) << "trial " << trial << ": " << reader.status();
    EXPECT_TRUE(reader->VerifyAll().ok()) << "trial " << trial;
    last_iteration = reader->iteration();
    // The next trial resumes from it (and saves over leftovers).
    if (trial == 0) args.push_back("--load=" + ckpt);
  }
  Result resumed =
      Train("resumed", 0,
            flags + " --load=" + ckpt + " --exit_interval=" + std::to_string(last_iteration + 1));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
}

// Bad checkpoint flags: exit 2 and one line naming the flag, before training.
TEST_F(CheckpointE2eTest, BadFlagsAreRefused) {
  const std::string hf = dir_ + "/hf";
  fs::create_directories(hf);
  ModelConfig wider;  // the test model's shape but for hidden_size
  wider.vocab_size = 64;
  wider.hidden_size = 48;
  wider.intermediate_size = 48;
  wider.num_hidden_layers = 2;
  wider.num_attention_heads = 4;
  wider.num_key_value_heads = 2;
  wider.num_local_experts = 4;
  wider.max_position_embeddings = 16;
  std::ofstream(hf + "/config.json") << wider.ToHfJson().Dump(2);
  const struct {
    std::string flags;
    std::string message;
  } kCases[] = {
      {" --save_interval=5", "--save_interval=5 needs --save=DIR"},
      {" --save=" + dir_ + "/c --save_keep=-1", "--save_keep must be >= 0, got -1"},
      {" --save=" + dir_ + "/c --save_interval=-2", "--save_interval must be >= 0, got -2"},
      {" --load=" + dir_ + "/c --init_from_hf=" + hf, "--load and --init_from_hf both set"},
      {" --load=" + dir_ + "/none", "--load=" + dir_ + "/none: " + dir_ + "/none does not exist"},
      {" --init_from_hf=" + dir_ + "/none", "--init_from_hf=" + dir_ + "/none: no such directory"},
      {" --init_from_hf=" + hf, "has hidden_size = 48, but this run has --hidden_size=32"},
  };
  for (const auto& c : kCases) {
    Result result = Train("bad", 0, TrainFlags(3) + c.flags);
    EXPECT_EQ(result.exit_code, 2) << c.flags << "\n" << result.output;
    EXPECT_EQ(result.output.rfind("moe-train: error: --", 0), 0u) << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.flags << "\n" << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
  }
}

// moe-convert both ways: a trained checkpoint to Hugging Face and back gives
// the same weights bit for bit; --init_from_hf of that folder trains exactly
// as --load of the converted checkpoint, and under TP 4 as on one rank;
// bad invocations are refused and write nothing.
TEST_F(CheckpointE2eTest, ConvertToHfAndBack) {
  const std::string ckpt = dir_ + "/ckpt";
  ASSERT_EQ(Train("trained", 0, TrainFlags(2) + " --save=" + ckpt).exit_code, 0);
  const std::string hf = dir_ + "/hf";
  Result to_hf = Shell(absl::StrCat(MOE_CONVERT_BIN, " --to_hf --load=", ckpt, " --out=", hf,
                                    " --max_shard_bytes=50000"),
                       dir_ + "/to_hf.out");
  ASSERT_EQ(to_hf.exit_code, 0) << to_hf.output;
  EXPECT_TRUE(fs::exists(hf + "/model.safetensors.index.json"));
  const std::string back = dir_ + "/back";
  Result from_hf =
      Shell(absl::StrCat(MOE_CONVERT_BIN, " --from_hf --hf_dir=", hf, " --save=", back),
            dir_ + "/from_hf.out");
  ASSERT_EQ(from_hf.exit_code, 0) << from_hf.output;
  absl::StatusOr<std::unique_ptr<Model>> a = LoadModelFromCheckpoint(ckpt);
  absl::StatusOr<std::unique_ptr<Model>> b = LoadModelFromCheckpoint(back);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < (*a)->Parameters().size(); ++i) {
    const Tensor& x = (*a)->Parameters()[i]->value;
    const Tensor& y = (*b)->Parameters()[i]->value;
    EXPECT_EQ(std::memcmp(x.raw_data(), y.raw_data(), x.nbytes()), 0)
        << (*a)->Parameters()[i]->name;
  }
  ASSERT_EQ(Train("init_hf", 0, TrainFlags(3) + " --init_from_hf=" + hf).exit_code, 0);
  ASSERT_EQ(Train("load_back", 0, TrainFlags(3) + " --load=" + back).exit_code, 0);
  ExpectSameSteps(ReadLog(Log("init_hf")), 0, ReadLog(Log("load_back")), 0, "init_from_hf");
#ifdef MOE_MPIEXEC
  // Under TP 4 each rank reads its slices (rows, o_proj's columns, the
  // replicated key/value heads) of the same files.
  const std::string tp4 = " --tensor_model_parallel_size=4 --sequence_parallel";
  Result tp = Train("init_hf_tp4", 4, TrainFlags(3) + tp4 + " --init_from_hf=" + hf);
  ASSERT_EQ(tp.exit_code, 0) << tp.output;
  ExpectSameSteps(ReadLog(Log("init_hf")), 0, ReadLog(Log("init_hf_tp4")), 1e-5,
                  "init_from_hf under TP 4");
#endif

  const struct {
    std::string flags;
    int code;
    std::string message;
  } kCases[] = {
      {"", 2, "pass exactly one of --to_hf"},
      {" --to_hf --from_hf", 2, "pass exactly one of --to_hf"},
      {" --to_hf --out=" + dir_ + "/x", 2, "--to_hf needs --load"},
      {" --from_hf --hf_dir=" + hf, 2, "--from_hf needs --save"},
      {" --to_hf --load=" + ckpt + " --out=" + hf, 1, "is not empty; nothing was written"},
      {" --to_hf --load=" + dir_ + "/none --out=" + dir_ + "/x", 1, "does not exist"},
      {" --from_hf --hf_dir=" + hf + " --save=" + back, 1, "already holds a checkpoint"},
      {" --from_hf --hf_dir=" + ckpt + " --save=" + dir_ + "/y", 1, "config.json is missing"},
  };
  for (const auto& c : kCases) {
    const std::string before = ReadAll(hf + "/config.json");
    Result result = Shell(MOE_CONVERT_BIN + c.flags, dir_ + "/bad.out");
    EXPECT_EQ(result.exit_code, c.code) << c.flags << "\n" << result.output;
    EXPECT_NE(result.output.find("moe-convert: error: "), std::string::npos) << result.output;
    EXPECT_NE(result.output.find(c.message), std::string::npos) << c.flags << "\n" << result.output;
    EXPECT_EQ(ReadAll(hf + "/config.json"), before);
  }
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
  EXPECT_FALSE(fs::exists(dir_ + "/y/latest"));
}

}  // namespace
}  // namespace moe
