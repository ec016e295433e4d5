// Whole-file reads and crash-safe writes.
//
// Every file the framework writes (checkpoints, configs, logs that are
// rewritten) goes through AtomicFileWriter: the bytes go to `path.tmp.<pid>`,
// which is fsynced and then renamed over `path`, and the directory is fsynced
// so that the rename itself survives a crash. A write that fails at any point
// leaves the previous file at `path` untouched and removes the temporary.
#ifndef MOE_CORE_IO_FILE_UTIL_H_
#define MOE_CORE_IO_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// A regular file opened for reads at any offset (pread), for formats whose
// payload is read piece by piece into tensors. Copies share the descriptor,
// which closes with the last copy; a file replaced by an atomic rename after
// Open() keeps reading the old contents consistently.
class RandomAccessFile {
 public:
  static absl::StatusOr<RandomAccessFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }  // at Open()
  // Reads exactly `bytes` at `offset`, or fails naming the path.
  absl::Status ReadAt(uint64_t offset, uint64_t bytes, void* destination) const;

 private:
  struct Descriptor;
  std::string path_;
  uint64_t size_ = 0;
  std::shared_ptr<const Descriptor> fd_;
};

// Writes `contents` to `path` atomically (see the file comment).
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// Streams a file into place atomically, for files too large to assemble in
// memory first.
//
//   AtomicFileWriter writer;
//   if (absl::Status s = writer.Open(path); !s.ok()) return s;
//   ... writer.Write(data, bytes) ...
//   return writer.Commit();
//
// Destroying a writer that was not committed removes the temporary file.
class AtomicFileWriter {
 public:
  AtomicFileWriter() = default;
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Open(const std::string& path);
  absl::Status Write(const void* data, size_t bytes);
  // fsync, rename over the destination, fsync the directory. After an error
  // the destination still holds its previous contents (or does not exist).
  absl::Status Commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  absl::Status Fail(const std::string& action, int error);
  void Abandon();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
};

}  // namespace moe

#endif  // MOE_CORE_IO_FILE_UTIL_H_
