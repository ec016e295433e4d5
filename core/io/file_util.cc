#include "core/io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

std::string ErrorText(int error) { return std::generic_category().message(error); }

absl::Status ErrnoStatus(int error, std::string message) {
  return absl::Status(absl::ErrnoToStatusCode(error), std::move(message));
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    return ErrnoStatus(error, absl::StrCat("cannot open ", path, " for reading: ", ErrorText(error),
                                           "; check that the path is right and readable"));
  }
  std::string contents;
  struct stat info;
  if (::fstat(fd, &info) == 0 && S_ISREG(info.st_mode)) {
    contents.reserve(static_cast<size_t>(info.st_size));
  }
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd);
      return ErrnoStatus(error, absl::StrCat("cannot read ", path, ": ", ErrorText(error)));
    }
    contents.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

struct RandomAccessFile::Descriptor {
  explicit Descriptor(int descriptor) : fd(descriptor) {}
  ~Descriptor() { ::close(fd); }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int fd;
};

absl::StatusOr<RandomAccessFile> RandomAccessFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    return ErrnoStatus(error, absl::StrCat("cannot open ", path, " for reading: ", ErrorText(error),
                                           "; check that the path is right and readable"));
  }
  RandomAccessFile file;
  file.path_ = path;
  file.fd_ = std::make_shared<const Descriptor>(fd);
  struct stat info;
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": not a regular file"));
  }
  file.size_ = static_cast<uint64_t>(info.st_size);
  return file;
}

absl::Status RandomAccessFile::ReadAt(uint64_t offset, uint64_t bytes, void* destination) const {
  char* out = static_cast<char*>(destination);
  while (bytes > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(bytes, uint64_t{1} << 30));
    const ssize_t n = ::pread(fd_->fd, out, chunk, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      return ErrnoStatus(error, absl::StrCat("cannot read ", path_, ": ", ErrorText(error)));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(path_, " ended at byte ", offset, " while ", bytes,
                                              " more bytes were expected; was it truncated or "
                                              "overwritten in place while being read?"));
    }
    out += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  AtomicFileWriter writer;
  if (absl::Status s = writer.Open(path); !s.ok()) return s;
  if (absl::Status s = writer.Write(contents.data(), contents.size()); !s.ok()) return s;
  return writer.Commit();
}

AtomicFileWriter::~AtomicFileWriter() { Abandon(); }

void AtomicFileWriter::Abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(temp_path_.c_str());
  }
}

absl::Status AtomicFileWriter::Fail(const std::string& action, int error) {
  Abandon();
  return ErrnoStatus(
      error, absl::StrCat("cannot write ", path_, ": ", action, " failed: ", ErrorText(error),
                          "; the previous contents of ", path_, " (if any) are unchanged"));
}

absl::Status AtomicFileWriter::Open(const std::string& path) {
  Abandon();
  path_ = path;
  temp_path_ = absl::StrCat(path, ".tmp.", ::getpid());
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int error = errno;
    return ErrnoStatus(error, absl::StrCat("cannot write ", path, ": creating the temporary file ",
                                           temp_path_, " failed: ", ErrorText(error),
                                           "; check that the directory exists and is writable"));
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Write(const void* data, size_t bytes) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path_, ": the writer is not open"));
  }
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Fail(absl::StrCat("writing ", temp_path_), errno);
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot write ", path_, ": the writer is not open"));
  }
  if (::fsync(fd_) != 0) return Fail(absl::StrCat("fsync of ", temp_path_), errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int error = errno;
    ::unlink(temp_path_.c_str());
    return Fail(absl::StrCat("closing ", temp_path_), error);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int error = errno;
    ::unlink(temp_path_.c_str());
    return Fail(absl::StrCat("renaming ", temp_path_, " to ", path_), error);
  }
  // Without this the rename may be lost in a crash even though the data is on disk.
  const std::string directory = DirectoryOf(path_);
  const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int sync_error = dir_fd < 0 ? errno : 0;
  if (dir_fd >= 0) {
    if (::fsync(dir_fd) != 0) sync_error = errno;
    ::close(dir_fd);
  }
  if (sync_error != 0) {
    return ErrnoStatus(sync_error, absl::StrCat(path_, " was written, but syncing its directory ",
                                                directory, " failed: ", ErrorText(sync_error),
                                                "; a crash now could lose the new file"));
  }
  return absl::OkStatus();
}

}  // namespace moe
