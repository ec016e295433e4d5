// Megatron-Core indexed datasets: token sequences in `P.bin` with their index
// in `P.idx` (MMIDIDX version 1), the format Megatron's
// tools/preprocess_data.py writes and megatron.core.datasets.indexed_dataset
// reads, so that data sets move freely between the two frameworks.
//
//   P.bin  the tokens of all sequences back to back, little-endian, no header
//   P.idx  "MMIDIDX\0\0" | u64 version = 1 | u8 dtype code | u64 S | u64 D |
//          int32 lengths[S] | int64 byte pointers[S] | int64 document_indices[D]
//
// A document is a run of sequences: document d holds sequences
// [document_indices[d], document_indices[d + 1]), so D = documents + 1, the
// indices start at 0 and end at S. Our writer stores one sequence per document
// (Megatron's preprocessing without sentence splitting); the reader accepts
// several, and documents with none (an empty text, as Megatron writes it).
//
// The index is read into memory once (20 bytes per sequence); tokens are read
// on demand with pread, so readers on many threads share one descriptor.
#ifndef MOE_CORE_DATA_INDEXED_DATASET_H_
#define MOE_CORE_DATA_INDEXED_DATASET_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/io/file_util.h"

namespace moe {

// Megatron's DType codes. Only the integer types hold tokens; the reader
// refuses the float codes with an error naming them.
enum class TokenDtype : uint8_t {
  kUInt8 = 1,
  kInt8 = 2,
  kInt16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kFloat64 = 6,
  kFloat32 = 7,
  kUInt16 = 8,
};

// "uint16", "int32", ...; "unknown" for codes outside 1..8.
const char* TokenDtypeName(uint8_t code);
// Bytes per element; 0 for unknown codes.
int TokenDtypeSize(uint8_t code);
// What Megatron's DType.optimal_dtype picks: uint16 below 65,500 ids, int32 above.
TokenDtype TokenDtypeForVocab(int64_t vocab_size);

// "P.bin" / "P.idx".
std::string IndexedDatasetBinPath(const std::string& prefix);
std::string IndexedDatasetIdxPath(const std::string& prefix);

// Streams documents into P.bin and writes P.idx at Finalize(). Both files go
// to temporary names and are renamed into place only by Finalize(), .bin
// first, so an interrupted or failed write never leaves a partial data set
// under the final names (nor replaces an existing one).
class IndexedDatasetWriter {
 public:
  // `dtype` must be an integer code (kUInt8, kInt8, kInt16, kInt32, kInt64, kUInt16).
  static absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> Create(const std::string& prefix,
                                                                      TokenDtype dtype);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One document of one sequence; an empty `tokens` records a document with no
  // sequence, as Megatron does for an empty text. Fails (writing nothing) if a
  // token does not fit the dtype.
  absl::Status AddDocument(std::span<const int32_t> tokens);
  // One document of several sequences: `tokens` is their concatenation and
  // `sequence_lengths` (each > 0) sums to tokens.size().
  absl::Status AddDocument(std::span<const int32_t> tokens,
                           std::span<const int64_t> sequence_lengths);
  // Commits P.bin, then writes P.idx atomically. The writer is done afterwards.
  absl::Status Finalize();

  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }
  const std::string& prefix() const { return prefix_; }

 private:
  IndexedDatasetWriter(std::string prefix, TokenDtype dtype);
  absl::Status Flush();

  std::string prefix_;
  TokenDtype dtype_;
  AtomicFileWriter bin_;
  std::string buffer_;  // encoded tokens not yet written to bin_
  std::vector<int32_t> lengths_;
  std::vector<int64_t> document_indices_{0};
  int64_t num_tokens_ = 0;
  bool finalized_ = false;
};

class IndexedDataset {
 public:
  // Reads and validates P.idx against P.bin; every inconsistency is an error
  // naming the file and the field (see the checks in indexed_dataset.cc).
  static absl::StatusOr<IndexedDataset> Open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  TokenDtype dtype() const { return dtype_; }
  int64_t num_sequences() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_documents() const { return static_cast<int64_t>(document_indices_.size()) - 1; }
  int64_t sequence_length(int64_t i) const;
  int64_t total_tokens() const { return total_tokens_; }
  const std::vector<int32_t>& sequence_lengths() const { return lengths_; }
  const std::vector<int64_t>& sequence_pointers() const { return pointers_; }
  const std::vector<int64_t>& document_indices() const { return document_indices_; }

  // Tokens [offset, offset + count) of sequence `seq` converted to int32.
  // Out-of-range requests and tokens that do not fit int32 (int64 files) are
  // errors, as are I/O failures.
  absl::Status ReadTokens(int64_t seq, int64_t offset, int64_t count, int32_t* out) const;

 private:
  std::string prefix_;
  TokenDtype dtype_ = TokenDtype::kUInt16;
  int item_size_ = 2;
  RandomAccessFile bin_;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> pointers_;
  std::vector<int64_t> document_indices_;
  int64_t total_tokens_ = 0;
};

}  // namespace moe

#endif  // MOE_CORE_DATA_INDEXED_DATASET_H_
