// safetensors files (https://github.com/huggingface/safetensors), the format
// of Hugging Face checkpoints:
//
//   u64 little-endian N | N bytes of UTF-8 JSON header | data buffer
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} (byte offsets into the data buffer) and may hold
// "__metadata__", a map of strings. Open() checks every rule the reference
// implementation checks (header size limit, tensors tiling the buffer with no
// gap, overlap or trailing bytes, sizes matching shapes, no duplicate names)
// and reports each violation in its own words, so a bad file never causes a
// crash or an out-of-bounds read.
#ifndef MOE_CORE_IO_SAFETENSORS_H_
#define MOE_CORE_IO_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/file_util.h"
#include "core/tensor.h"

namespace moe {

// Largest header the reference reader accepts.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// The safetensors name of a dtype ("F32", "BF16", "F64", "I32", "I64").
std::string_view SafetensorsDTypeName(DType dtype);

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;  // as written in the file: "F32", "F16", "U8", ...
  // The Tensor dtype for F32, BF16, F64, I32 and I64; empty for the other
  // safetensors dtypes, which Open() accepts but Read() refuses.
  std::optional<DType> dtype;
  Shape shape;
  uint64_t data_begin = 0;  // byte offsets into the data buffer
  uint64_t data_end = 0;
};

class SafetensorsFile {
 public:
  // Reads and validates the header; tensor data is read on demand. The file
  // stays open (shared by copies of this object), so a file replaced by an
  // atomic rename after Open() still reads the old contents consistently.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names in header order.
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  bool Contains(std::string_view name) const { return Find(name) != nullptr; }
  const SafetensorsEntry* Find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A new CPU tensor with the stored bytes.
  absl::StatusOr<Tensor> Read(std::string_view name) const;
  // Reads into an existing tensor (any device; for example a view into a
  // flat parameter buffer), which must have the stored shape and dtype.
  absl::Status ReadInto(std::string_view name, Tensor& destination) const;

 private:
  absl::StatusOr<const SafetensorsEntry*> FindLoadable(std::string_view name) const;
  absl::Status ReadEntry(const SafetensorsEntry& entry, void* destination) const;

  std::string path_;
  RandomAccessFile file_;
  uint64_t data_start_ = 0;  // file offset of the data buffer: 8 + N
  std::vector<SafetensorsEntry> entries_;
  std::vector<std::string> names_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` (any device; F32, BF16, F64, I32, I64) in the given order,
// with the header padded by spaces to a multiple of 8 bytes. Empty `metadata`
// becomes {"format": "pt"}, which older transformers versions require. The
// write is atomic: a failure leaves any existing file at `path` intact.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace moe

#endif  // MOE_CORE_IO_SAFETENSORS_H_
