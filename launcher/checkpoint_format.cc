#include "launcher/checkpoint_format.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/io/file_util.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

constexpr char kShardMetadataKey[] = "moe_checkpoint";
constexpr std::string_view kIterPrefix = "iter_";
// Directories an interrupted save or deletion leaves behind.
constexpr std::string_view kLeftoverSuffixes[] = {".tmp", ".old", ".deleting"};

std::string PathIn(const std::string& dir, std::string_view name) {
  return (fs::path(dir) / name).string();
}

std::string Quoted(std::string_view s) {
  std::string out(1, '"');
  out.append(s.data(), s.size());
  out.push_back('"');
  return out;
}

uint32_t Crc32(const void* data, size_t bytes) {
  return static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), static_cast<const Bytef*>(data), bytes));
}

// fsync of a directory, so that the entries created or renamed in it survive a crash.
absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int error = fd < 0 ? errno : 0;
  if (fd >= 0) {
    if (::fsync(fd) != 0) error = errno;
    ::close(fd);
  }
  if (error != 0) {
    return absl::InternalError(
        absl::StrCat("cannot sync directory ", dir, ": ", std::generic_category().message(error)));
  }
  return absl::OkStatus();
}

absl::Status FsError(const char* action, const std::string& path, const std::error_code& e) {
  return absl::InternalError(absl::StrCat("cannot ", action, " ", path, ": ", e.message(),
                                          "; check the permissions and free space of the "
                                          "checkpoint directory"));
}

// A contiguous run of elements: `length` elements at flat index `global` of
// the logical tensor, stored at flat index `local` of a piece or region.
struct Run {
  int64_t global = 0;
  int64_t local = 0;
  int64_t length = 0;
};

// The runs of the box at `offsets` with extent `shape`, in increasing global
// order. Trailing dimensions that the box covers whole merge into one run, so
// a whole tensor, or a slice along dimension 0, is a single run.
std::vector<Run> BoxRuns(const Shape& global_shape, const std::vector<int64_t>& offsets,
                         const Shape& shape) {
  if (NumElements(shape) == 0) return {};
  const int n = static_cast<int>(shape.size());
  if (n == 0) return {Run{0, 0, 1}};
  std::vector<int64_t> global_stride(n, 1);
  for (int d = n - 2; d >= 0; --d) global_stride[d] = global_stride[d + 1] * global_shape[d + 1];
  // Dimensions j+1.. are whole: one run spans dimension j and everything after it.
  int j = n - 1;
  while (j > 0 && shape[j] == global_shape[j]) --j;
  const int64_t length = shape[j] * global_stride[j];
  std::vector<Run> runs;
  std::vector<int64_t> index(j, 0);  // odometer over dimensions 0 .. j-1
  int64_t local = 0;
  while (true) {
    int64_t global = offsets[j] * global_stride[j];
    for (int d = 0; d < j; ++d) global += (offsets[d] + index[d]) * global_stride[d];
    runs.push_back(Run{global, local, length});
    local += length;
    int d = j - 1;
    while (d >= 0 && ++index[d] == shape[d]) index[d--] = 0;
    if (d < 0) break;
  }
  return runs;
}

// The runs of a slice whose stored tensor has `stored_shape`.
std::vector<Run> SliceRuns(const TensorSlice& slice, const Shape& stored_shape) {
  if (!slice.is_flat()) return BoxRuns(slice.global_shape, slice.offsets, stored_shape);
  // The part [flat_offset, flat_offset + n) of the box's runs, renumbered from 0.
  const int64_t begin = slice.flat_offset;
  const int64_t end = begin + NumElements(stored_shape);
  std::vector<Run> runs;
  for (const Run& r : BoxRuns(slice.global_shape, slice.offsets, slice.box_shape)) {
    const int64_t lo = std::max(begin, r.local);
    const int64_t hi = std::min(end, r.local + r.length);
    if (lo < hi) runs.push_back(Run{r.global + lo - r.local, lo - begin, hi - lo});
  }
  return runs;
}

// Copies the overlap of `src` runs into `dst` runs (both sorted by global
// index), elements of `element_bytes`; returns the elements copied.
int64_t CopyOverlap(const std::vector<Run>& src, const char* src_data, const std::vector<Run>& dst,
                    char* dst_data, size_t element_bytes) {
  int64_t copied = 0;
  size_t i = 0, k = 0;
  while (i < src.size() && k < dst.size()) {
    const Run& a = src[i];
    const Run& b = dst[k];
    const int64_t lo = std::max(a.global, b.global);
    const int64_t hi = std::min(a.global + a.length, b.global + b.length);
    if (lo < hi) {
      std::memcpy(dst_data + static_cast<size_t>(b.local + lo - b.global) * element_bytes,
                  src_data + static_cast<size_t>(a.local + lo - a.global) * element_bytes,
                  static_cast<size_t>(hi - lo) * element_bytes);
      copied += hi - lo;
    }
    if (a.global + a.length <= b.global + b.length) {
      ++i;
    } else {
      ++k;
    }
  }
  return copied;
}

bool Overlaps(const std::vector<Run>& a, const std::vector<Run>& b) {
  size_t i = 0, k = 0;
  while (i < a.size() && k < b.size()) {
    if (std::max(a[i].global, b[k].global) <
        std::min(a[i].global + a[i].length, b[k].global + b[k].length)) {
      return true;
    }
    if (a[i].global + a[i].length <= b[k].global + b[k].length) {
      ++i;
    } else {
      ++k;
    }
  }
  return false;
}

Json ShapeJson(const Shape& shape) {
  Json array = Json::MakeArray();
  for (int64_t d : shape) array.Append(d);
  return array;
}

// Reads a JSON array of non-negative integers.
std::optional<std::vector<int64_t>> IntArray(const Json* json) {
  if (json == nullptr || !json->is_array()) return std::nullopt;
  std::vector<int64_t> values;
  for (const Json& v : json->as_array()) {
    if (!v.is_int() || v.as_int() < 0) return std::nullopt;
    values.push_back(v.as_int());
  }
  return values;
}

// The iteration directories (complete or not) in `dir`, ascending.
std::vector<std::pair<int64_t, std::string>> IterationDirs(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    const std::optional<int64_t> iteration = ParseIterationDirName(name);
    if (iteration.has_value() && entry.is_directory(error)) found.emplace_back(*iteration, name);
  }
  std::sort(found.begin(), found.end());
  return found;
}

// "iter_0000002, iter_0000004": the complete checkpoints in `dir` other than `except`.
std::vector<std::string> OtherCheckpoints(const std::string& dir, const std::string& except) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& [iteration, name] : IterationDirs(dir)) {
    if (name != except && fs::exists(PathIn(PathIn(dir, name), kCheckpointMetadataFile), error)) {
      names.push_back(name);
    }
  }
  return names;
}

// Renames `path` aside and removes it, so that a half-deleted directory never
// looks like a checkpoint.
absl::Status RemoveDirectory(const std::string& path) {
  std::error_code error;
  const std::string doomed = path + ".deleting";
  fs::rename(path, doomed, error);
  if (error) return FsError("rename", path, error);
  fs::remove_all(doomed, error);
  if (error) return FsError("remove", doomed, error);
  return absl::OkStatus();
}

}  // namespace

TensorSlice TensorSlice::Whole(const Shape& shape) {
  return Box(shape, std::vector<int64_t>(shape.size(), 0));
}

TensorSlice TensorSlice::Box(const Shape& global_shape, const std::vector<int64_t>& offsets) {
  TensorSlice slice;
  slice.global_shape = global_shape;
  slice.offsets = offsets;
  return slice;
}

TensorSlice TensorSlice::FlatRun(const TensorSlice& box, const Shape& box_shape, int64_t offset) {
  TensorSlice slice = box;
  slice.box_shape = box_shape;
  slice.flat_offset = offset;
  return slice;
}

std::string IterationDirName(int64_t iteration) { return absl::StrFormat("iter_%07d", iteration); }

std::optional<int64_t> ParseIterationDirName(std::string_view name) {
  if (!name.starts_with(kIterPrefix)) return std::nullopt;
  const std::string_view digits = name.substr(kIterPrefix.size());
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit)) {
    return std::nullopt;
  }
  int64_t value = 0;
  for (char c : digits) value = value * 10 + (c - '0');
  return value;
}

std::string ShardFileName(int rank) { return absl::StrFormat("rank_%05d.safetensors", rank); }

std::string OptimizerStateName(std::string_view kind, std::string_view param_name) {
  return absl::StrCat("optimizer.", std::string(kind), ".", std::string(param_name));
}

absl::Status WriteShardFile(const std::string& path, const std::vector<ShardTensor>& tensors,
                            int64_t iteration, int rank) {
  Json records = Json::MakeObject();
  std::vector<std::pair<std::string, Tensor>> named;
  named.reserve(tensors.size());
  for (const ShardTensor& t : tensors) {
    MOE_CHECK(t.data.device() == Device::kCpu)
        << "WriteShardFile: " << t.name << " must be a CPU tensor, got " << t.data.Describe();
    Json record = Json::MakeObject();
    record.Set("global_shape", ShapeJson(t.slice.global_shape));
    record.Set("offsets", ShapeJson(t.slice.offsets));
    if (t.slice.is_flat()) {
      record.Set("box_shape", ShapeJson(t.slice.box_shape));
      record.Set("flat_offset", t.slice.flat_offset);
    }
    record.Set("crc32", static_cast<int64_t>(Crc32(t.data.raw_data(), t.data.nbytes())));
    records.Set(t.name, std::move(record));
    named.emplace_back(t.name, t.data);
  }
  Json meta = Json::MakeObject();
  meta.Set("format_version", kCheckpointFormatVersion);
  meta.Set("iteration", iteration);
  meta.Set("rank", rank);
  meta.Set("tensors", std::move(records));
  return WriteSafetensors(path, named, {{kShardMetadataKey, meta.Dump()}});
}

absl::StatusOr<std::string> BeginCheckpointSave(const std::string& dir, int64_t iteration) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir, error)) {
    return absl::InternalError(absl::StrCat(
        "--save=", dir, ": cannot create the checkpoint directory (",
        error ? error.message() : "a file of that name exists", "); choose a writable path"));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(kIterPrefix)) continue;
    for (std::string_view suffix : kLeftoverSuffixes) {
      if (name.ends_with(suffix)) {
        fs::remove_all(entry.path(), error);
        if (error) return FsError("remove the leftover", entry.path().string(), error);
        break;
      }
    }
  }
  const std::string temp = PathIn(dir, IterationDirName(iteration) + ".tmp");
  fs::create_directory(temp, error);
  if (error) return FsError("create", temp, error);
  return temp;
}

absl::Status CommitCheckpointSave(const std::string& dir, int64_t iteration,
                                  const std::string& temp_dir, const Json& metadata, int keep) {
  MaybeCrashForTest("shards_written");
  if (absl::Status s =
          WriteFileAtomically(PathIn(temp_dir, kCheckpointMetadataFile), metadata.Dump(2) + "\n");
      !s.ok()) {
    return s;
  }
  const std::string name = IterationDirName(iteration);
  const std::string final_dir = PathIn(dir, name);
  std::error_code error;
  bool replaced = false;
  if (fs::exists(final_dir, error)) {
    // A save of this iteration exists (a run resumed from an earlier step,
    // or the last step saved twice): swap the two atomically, so that
    // `latest` never names a missing or half-written directory.
    if (::renameat2(AT_FDCWD, temp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) !=
        0) {
      return absl::InternalError(absl::StrCat(
          "cannot replace the existing checkpoint ", final_dir, ": ",
          std::generic_category().message(errno),
          " (the file system cannot swap directories atomically); remove that directory or "
          "save elsewhere"));
    }
    replaced = true;
  } else if (::rename(temp_dir.c_str(), final_dir.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", temp_dir, " to ", final_dir, ": ",
                                            std::generic_category().message(errno)));
  }
  if (absl::Status s = SyncDirectory(dir); !s.ok()) return s;
  MaybeCrashForTest("renamed");
  if (absl::Status s = WriteFileAtomically(PathIn(dir, kCheckpointLatestFile), name + "\n");
      !s.ok()) {
    return s;
  }
  MaybeCrashForTest("latest_written");
  if (replaced) {
    fs::remove_all(temp_dir, error);  // now the previous save of this iteration
    if (error) return FsError("remove", temp_dir, error);
  }
  if (keep <= 0) return absl::OkStatus();
  std::vector<std::pair<int64_t, std::string>> older;
  for (auto& found : IterationDirs(dir)) {
    if (found.first < iteration) older.push_back(std::move(found));
  }
  const size_t keep_older = static_cast<size_t>(keep - 1);
  for (size_t i = 0; i + keep_older < older.size(); ++i) {
    if (absl::Status s = RemoveDirectory(PathIn(dir, older[i].second)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void AbandonCheckpointSave(const std::string& temp_dir) {
  std::error_code error;
  fs::remove_all(temp_dir, error);
}

void MaybeCrashForTest(std::string_view point) {
  const char* at = std::getenv("MOE_CHECKPOINT_CRASH_AT");
  if (at != nullptr && point == at) {
    std::fprintf(stderr, "MOE_CHECKPOINT_CRASH_AT=%s: killing this process (SIGKILL)\n", at);
    std::fflush(stderr);
    std::raise(SIGKILL);
  }
}

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& path) {
  std::error_code error;
  if (!fs::is_directory(path, error)) {
    return absl::NotFoundError(absl::StrCat(
        path, fs::exists(path, error) ? " is not a directory" : " does not exist",
        "; pass the --save directory of an earlier run (it holds a file named latest) or one "
        "of its iter_* directories"));
  }
  CheckpointReader reader;
  if (fs::exists(PathIn(path, kCheckpointMetadataFile), error)) {
    fs::path normal = fs::path(path).lexically_normal();
    if (!normal.has_filename()) normal = normal.parent_path();  // "dir/" -> "dir"
    reader.dir_ = normal.string();
    const fs::path parent = normal.parent_path();
    reader.save_dir_ = parent.empty() ? fs::path(".").string() : parent.string();
  } else {
    const std::string latest_path = PathIn(path, kCheckpointLatestFile);
    reader.save_dir_ = path;
    if (!fs::exists(latest_path, error)) {
      const std::vector<std::string> others = OtherCheckpoints(path, "");
      return absl::NotFoundError(absl::StrCat(
          path, " holds no checkpoint: it has no file named latest (and no metadata.json)",
          others.empty()
              ? "; pass the --save directory of an earlier run, or start without --load"
              : absl::StrCat(". It holds ", absl::StrJoin(others, ", "),
                             " (a save was interrupted before writing latest?); pass one of "
                             "them, e.g. --load=",
                             PathIn(path, others.back()))));
    }
    absl::StatusOr<std::string> latest = ReadFileToString(latest_path);
    if (!latest.ok()) return latest.status();
    const std::string name(absl::StripAsciiWhitespace(*latest));
    if (!ParseIterationDirName(name).has_value()) {
      return absl::DataLossError(absl::StrCat(
          latest_path, " holds ", Quoted(name.substr(0, 40)),
          ", not an iteration directory name such as iter_0000010; the file is damaged: write "
          "the name of the iteration to load into it, or pass that directory itself "
          "(--load=",
          PathIn(path, "iter_..."), ")"));
    }
    reader.dir_ = PathIn(path, name);
    if (!fs::is_directory(reader.dir_, error)) {
      return absl::NotFoundError(absl::StrCat(latest_path, " names ", name, ", but ", reader.dir_,
                                              " does not exist", reader.DamagedHint()));
    }
  }
  const std::string metadata_path = PathIn(reader.dir_, kCheckpointMetadataFile);
  if (!fs::exists(metadata_path, error)) {
    return absl::NotFoundError(absl::StrCat(metadata_path,
                                            " is missing: the directory is not a complete "
                                            "checkpoint",
                                            reader.DamagedHint()));
  }
  absl::StatusOr<Json> metadata = ReadJsonFile(metadata_path);
  if (!metadata.ok()) {
    return absl::DataLossError(absl::StrCat(metadata.status().message(), reader.DamagedHint()));
  }
  reader.metadata_ = *std::move(metadata);
  const auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(
        metadata_path, " is not valid checkpoint metadata: ", why, reader.DamagedHint()));
  };
  const Json& m = reader.metadata_;
  const Json* format = m.Find("format");
  if (format == nullptr || !format->is_string() || format->as_string() != kCheckpointFormatName) {
    return bad(absl::StrCat("\"format\" must be ", Quoted(kCheckpointFormatName)));
  }
  const Json* version = m.Find("format_version");
  if (version == nullptr || !version->is_int() || version->as_int() < 1) {
    return bad("\"format_version\" must be a positive integer");
  }
  if (version->as_int() > kCheckpointFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(reader.dir_, " was written in checkpoint format ", version->as_int(),
                     " by a newer moe-train; this build reads format ", kCheckpointFormatVersion,
                     " and older: load it with a newer build"));
  }
  const Json* iteration = m.Find("iteration");
  if (iteration == nullptr || !iteration->is_int() || iteration->as_int() < 0) {
    return bad("\"iteration\" must be an integer >= 0");
  }
  reader.iteration_ = iteration->as_int();
  const Json* files = m.Find("files");
  if (files == nullptr || !files->is_array() || files->size() == 0) {
    return bad("\"files\" must list the shard files");
  }
  std::vector<std::string> names;
  for (const Json& f : files->as_array()) {
    if (!f.is_string() || f.as_string().empty() || f.as_string().find('/') != std::string::npos ||
        f.as_string().starts_with(".")) {
      return bad("\"files\" must hold file names in the checkpoint directory");
    }
    names.push_back(f.as_string());
  }
  if (absl::Status s = reader.OpenShards(names); !s.ok()) return s;
  return reader;
}

absl::Status CheckpointReader::OpenShards(const std::vector<std::string>& files) {
  std::error_code error;
  for (const std::string& name : files) {
    const std::string path = PathIn(dir_, name);
    if (!fs::exists(path, error)) {
      return absl::NotFoundError(absl::StrCat("checkpoint shard ", path,
                                              " is missing (metadata.json lists it); the "
                                              "checkpoint is incomplete",
                                              DamagedHint()));
    }
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
    if (!file.ok()) {
      return absl::DataLossError(absl::StrCat(
          "checkpoint shard ", path, " is damaged: ", file.status().message(), DamagedHint()));
    }
    const auto bad = [&](absl::string_view why) {
      return absl::DataLossError(
          absl::StrCat("checkpoint shard ", path, " is damaged: ", why, DamagedHint()));
    };
    auto meta_it = file->metadata().find(kShardMetadataKey);
    if (meta_it == file->metadata().end()) {
      return bad(absl::StrCat("its header has no ", Quoted(kShardMetadataKey),
                              " entry (is it a moe-train shard file?)"));
    }
    absl::StatusOr<Json> meta = ParseJson(meta_it->second, path);
    if (!meta.ok()) return bad(meta.status().message());
    const Json* iteration = meta->Find("iteration");
    if (iteration == nullptr || !iteration->is_int() || iteration->as_int() != iteration_) {
      return bad(absl::StrCat("it belongs to another save (iteration ",
                              iteration != nullptr ? iteration->Dump() : "missing",
                              ", metadata.json says ", iteration_, ")"));
    }
    const Json* records = meta->Find("tensors");
    if (records == nullptr || !records->is_object()) return bad("no \"tensors\" records");
    const size_t index = files_.size();
    files_.push_back(*std::move(file));
    const SafetensorsFile& stored = files_.back();
    for (size_t e = 0; e < stored.entries().size(); ++e) {
      const SafetensorsEntry& entry = stored.entries()[e];
      const Json* record = records->Find(entry.name);
      if (record == nullptr) {
        return bad(absl::StrCat("tensor ", Quoted(entry.name), " has no slice record"));
      }
      if (absl::Status s = AddPiece(index, e, *record); !s.ok()) return bad(s.message());
    }
    if (records->size() != stored.entries().size()) {
      return bad("its slice records name tensors that the file does not hold");
    }
  }
  for (const auto& [name, logical] : tensors_) {
    if (absl::Status s = CheckNoOverlap(name, logical); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::AddPiece(size_t file, size_t entry_index, const Json& record) {
  const SafetensorsEntry& entry = files_[file].entries()[entry_index];
  const auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("tensor ", Quoted(entry.name), ": ", why));
  };
  if (!entry.dtype.has_value() || entry.dtype == DType::kI32 || entry.dtype == DType::kI64) {
    return bad(absl::StrCat("dtype ", entry.dtype_name, " is not a checkpoint dtype"));
  }
  Piece piece;
  piece.file = file;
  piece.entry = entry_index;
  const std::optional<std::vector<int64_t>> global = IntArray(record.Find("global_shape"));
  if (!global.has_value()) return bad("\"global_shape\" must be an array of sizes");
  piece.slice.global_shape = *global;
  const std::optional<std::vector<int64_t>> offsets = IntArray(record.Find("offsets"));
  if (!offsets.has_value() || offsets->size() != global->size()) {
    return bad(absl::StrCat("\"offsets\" must give a corner in ", ShapeToString(*global)));
  }
  piece.slice.offsets = *offsets;
  // The box's extent: the stored shape, or box_shape for a flat run of it.
  Shape box = entry.shape;
  if (const Json* flat = record.Find("flat_offset"); flat != nullptr) {
    const std::optional<std::vector<int64_t>> box_shape = IntArray(record.Find("box_shape"));
    if (!flat->is_int() || flat->as_int() < 0 || !box_shape.has_value() ||
        entry.shape.size() != 1 || flat->as_int() + entry.shape[0] > NumElements(*box_shape)) {
      return bad(absl::StrCat("a flat run of ", entry.shape.size() == 1 ? entry.shape[0] : -1,
                              " elements (", record.Dump(), ") does not fit in its box"));
    }
    box = *box_shape;
    piece.slice.box_shape = *box_shape;
    piece.slice.flat_offset = flat->as_int();
  }
  bool fits = box.size() == global->size();
  for (size_t d = 0; fits && d < global->size(); ++d) fits = (*offsets)[d] + box[d] <= (*global)[d];
  if (!fits) {
    return bad(absl::StrCat("its box ", ShapeToString(box), " at ", ShapeToString(*offsets),
                            " does not fit in the global shape ", ShapeToString(*global)));
  }
  const Json* crc = record.Find("crc32");
  if (crc == nullptr || !crc->is_int() || crc->as_int() < 0 || crc->as_int() > 0xffffffffLL) {
    return bad("\"crc32\" must be a 32-bit checksum");
  }
  piece.crc32 = static_cast<uint32_t>(crc->as_int());
  auto [it, inserted] = tensors_.try_emplace(entry.name);
  if (inserted) {
    it->second.global_shape = *global;
  } else if (it->second.global_shape != *global) {
    return bad(absl::StrCat("its global shape ", ShapeToString(*global), " differs from ",
                            ShapeToString(it->second.global_shape), " in another shard"));
  }
  it->second.pieces.push_back(std::move(piece));
  total_bytes_ += static_cast<int64_t>(entry.data_end - entry.data_begin);
  return absl::OkStatus();
}

absl::Status CheckpointReader::CheckNoOverlap(const std::string& name,
                                              const Logical& logical) const {
  std::vector<std::vector<Run>> runs;
  for (const Piece& piece : logical.pieces) {
    runs.push_back(SliceRuns(piece.slice, files_[piece.file].entries()[piece.entry].shape));
  }
  for (size_t a = 0; a < runs.size(); ++a) {
    for (size_t b = a + 1; b < runs.size(); ++b) {
      if (Overlaps(runs[a], runs[b])) {
        return absl::DataLossError(absl::StrCat(
            "checkpoint ", dir_, ": tensor ", Quoted(name), " is stored twice, overlapping, in ",
            files_[logical.pieces[a].file].path(), " and ", files_[logical.pieces[b].file].path(),
            "; shard files from different saves were mixed", DamagedHint()));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> CheckpointReader::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, logical] : tensors_) names.push_back(name);
  return names;
}

const Shape* CheckpointReader::GlobalShape(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  return it == tensors_.end() ? nullptr : &it->second.global_shape;
}

absl::StatusOr<Tensor> CheckpointReader::ReadPiece(const Piece& piece) const {
  const SafetensorsFile& file = files_[piece.file];
  const SafetensorsEntry& entry = file.entries()[piece.entry];
  absl::StatusOr<Tensor> data = file.Read(entry.name);
  if (!data.ok()) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint shard ", file.path(), " is damaged: ", data.status().message(), DamagedHint()));
  }
  const uint32_t crc = Crc32(data->raw_data(), data->nbytes());
  if (crc != piece.crc32) {
    return absl::DataLossError(absl::StrFormat(
        "checkpoint shard %s is corrupt: tensor \"%s\" fails its checksum (CRC-32 %08x, the "
        "file's record says %08x)%s",
        file.path(), entry.name, crc, piece.crc32, DamagedHint()));
  }
  return data;
}

absl::Status CheckpointReader::Read(std::string_view name, const TensorSlice& slice,
                                    Tensor* out) const {
  MOE_CHECK(out != nullptr && out->device() == Device::kCpu)
      << "CheckpointReader::Read: " << name << " needs a CPU output tensor";
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", dir_, " has no tensor ", Quoted(name)));
  }
  const Logical& logical = it->second;
  if (logical.global_shape != slice.global_shape) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", dir_, ": tensor ", Quoted(name), " has shape ",
                     ShapeToString(logical.global_shape), ", but this model's is ",
                     ShapeToString(slice.global_shape)));
  }
  const std::vector<Run> want = SliceRuns(slice, out->shape());
  const size_t element = DTypeSize(out->dtype());
  int64_t covered = 0;
  for (const Piece& piece : logical.pieces) {
    const SafetensorsFile& file = files_[piece.file];
    const SafetensorsEntry& entry = file.entries()[piece.entry];
    const std::vector<Run> have = SliceRuns(piece.slice, entry.shape);
    if (!Overlaps(have, want)) continue;
    const bool same_box = !slice.is_flat() && !piece.slice.is_flat() &&
                          slice.offsets == piece.slice.offsets && entry.shape == out->shape();
    if (same_box && entry.dtype == out->dtype()) {
      // The common case (whole tensors): straight into the destination.
      if (absl::Status s = file.ReadInto(entry.name, *out); !s.ok()) {
        return absl::DataLossError(absl::StrCat("checkpoint shard ", file.path(),
                                                " is damaged: ", s.message(), DamagedHint()));
      }
      const uint32_t crc = Crc32(out->raw_data(), out->nbytes());
      if (crc != piece.crc32) {
        return absl::DataLossError(absl::StrFormat(
            "checkpoint shard %s is corrupt: tensor \"%s\" fails its checksum (CRC-32 %08x, the "
            "file's record says %08x)%s",
            file.path(), entry.name, crc, piece.crc32, DamagedHint()));
      }
      covered += out->numel();
      continue;
    }
    absl::StatusOr<Tensor> data = ReadPiece(piece);
    if (!data.ok()) return data.status();
    const Tensor source = data->dtype() == out->dtype() ? *data : data->Cast(out->dtype());
    covered += CopyOverlap(have, static_cast<const char*>(source.raw_data()), want,
                           static_cast<char*>(out->raw_data()), element);
  }
  if (covered != out->numel()) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint ", dir_, " holds only ", covered, " of the ", out->numel(),
        " elements of tensor ", Quoted(name),
        " that this rank needs; a shard file is missing from metadata.json's \"files\"",
        DamagedHint()));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::VerifyAll() const {
  for (const auto& [name, logical] : tensors_) {
    for (const Piece& piece : logical.pieces) {
      if (absl::StatusOr<Tensor> data = ReadPiece(piece); !data.ok()) return data.status();
    }
  }
  return absl::OkStatus();
}

std::string CheckpointReader::DamagedHint() const {
  const std::string self = fs::path(dir_).filename().string();
  const std::vector<std::string> others = OtherCheckpoints(save_dir_, self);
  if (others.empty()) {
    return absl::StrCat("; ", save_dir_,
                        " holds no other checkpoint to fall back to: start the run again "
                        "without --load");
  }
  return absl::StrCat(
      "; load another checkpoint instead, e.g. --load=", PathIn(save_dir_, others.back()), " (",
      save_dir_, " holds ", absl::StrJoin(others, ", "), ")");
}

}  // namespace moe
