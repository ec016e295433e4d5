#include "core/data/indexed_dataset.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace moe {
namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
// magic 9 + version 8 + dtype 1 + sequence count 8 + document count 8.
constexpr uint64_t kHeaderBytes = 34;
// Tokens are buffered and written in chunks of about this size.
constexpr size_t kWriteChunkBytes = size_t{1} << 20;

static_assert(std::endian::native == std::endian::little,
              "the .bin/.idx format is little-endian; a big-endian host needs byte swaps");

bool IsIntegerCode(uint8_t code) {
  return code >= 1 && code <= 8 && code != static_cast<uint8_t>(TokenDtype::kFloat64) &&
         code != static_cast<uint8_t>(TokenDtype::kFloat32);
}

// Smallest and largest id a dtype can hold, as int64.
std::pair<int64_t, int64_t> TokenRange(TokenDtype dtype) {
  switch (dtype) {
    case TokenDtype::kUInt8:
      return {0, 255};
    case TokenDtype::kInt8:
      return {-128, 127};
    case TokenDtype::kInt16:
      return {-32768, 32767};
    case TokenDtype::kUInt16:
      return {0, 65535};
    default:
      return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
  }
}

template <typename T>
void AppendAs(std::span<const int32_t> tokens, std::string* out) {
  const size_t start = out->size();
  out->resize(start + tokens.size() * sizeof(T));
  char* p = out->data() + start;
  for (const int32_t token : tokens) {
    const T value = static_cast<T>(token);
    std::memcpy(p, &value, sizeof(T));
    p += sizeof(T);
  }
}

template <typename T>
absl::Status ConvertTokens(const char* bytes, int64_t count, int32_t* out,
                           const std::string& bin_path) {
  for (int64_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, bytes + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
    if constexpr (sizeof(T) > sizeof(int32_t)) {
      if (value < std::numeric_limits<int32_t>::min() ||
          value > std::numeric_limits<int32_t>::max()) {
        return absl::OutOfRangeError(absl::StrCat(bin_path, " holds token ", value,
                                                  ", which does not fit a 32-bit token id"));
      }
    }
    out[i] = static_cast<int32_t>(value);
  }
  return absl::OkStatus();
}

template <typename T>
void AppendPod(std::string* out, const T& value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
T LoadPod(const char* bytes) {
  T value;
  std::memcpy(&value, bytes, sizeof(T));
  return value;
}

absl::Status Invalid(const std::string& idx_path, const std::string& detail) {
  return absl::InvalidArgumentError(
      absl::StrCat(idx_path, " is not a valid Megatron indexed dataset index: ", detail));
}

}  // namespace

const char* TokenDtypeName(uint8_t code) {
  switch (code) {
    case 1:
      return "uint8";
    case 2:
      return "int8";
    case 3:
      return "int16";
    case 4:
      return "int32";
    case 5:
      return "int64";
    case 6:
      return "float64";
    case 7:
      return "float32";
    case 8:
      return "uint16";
    default:
      return "unknown";
  }
}

int TokenDtypeSize(uint8_t code) {
  switch (code) {
    case 1:
    case 2:
      return 1;
    case 3:
    case 8:
      return 2;
    case 4:
    case 7:
      return 4;
    case 5:
    case 6:
      return 8;
    default:
      return 0;
  }
}

TokenDtype TokenDtypeForVocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDtype::kUInt16 : TokenDtype::kInt32;
}

std::string IndexedDatasetBinPath(const std::string& prefix) { return prefix + ".bin"; }
std::string IndexedDatasetIdxPath(const std::string& prefix) { return prefix + ".idx"; }

// ---------------------------------------------------------------------------
// Writer

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDtype dtype)
    : prefix_(std::move(prefix)), dtype_(dtype) {}

IndexedDatasetWriter::~IndexedDatasetWriter() = default;

absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> IndexedDatasetWriter::Create(
    const std::string& prefix, TokenDtype dtype) {
  const auto code = static_cast<uint8_t>(dtype);
  if (!IsIntegerCode(code)) {
    return absl::InvalidArgumentError(
        absl::StrCat("IndexedDatasetWriter for ", prefix, ": dtype code ", int{code}, " (",
                     TokenDtypeName(code), ") cannot hold token ids; use an integer dtype"));
  }
  std::unique_ptr<IndexedDatasetWriter> writer(new IndexedDatasetWriter(prefix, dtype));
  if (absl::Status s = writer->bin_.Open(IndexedDatasetBinPath(prefix)); !s.ok()) return s;
  return writer;
}

absl::Status IndexedDatasetWriter::AddDocument(std::span<const int32_t> tokens) {
  if (tokens.empty()) return AddDocument(tokens, {});
  const int64_t length = static_cast<int64_t>(tokens.size());
  return AddDocument(tokens, std::span<const int64_t>(&length, 1));
}

absl::Status IndexedDatasetWriter::AddDocument(std::span<const int32_t> tokens,
                                               std::span<const int64_t> sequence_lengths) {
  if (finalized_) {
    return absl::FailedPreconditionError(
        absl::StrCat("IndexedDatasetWriter for ", prefix_, ": AddDocument after Finalize"));
  }
  int64_t sum = 0;
  for (const int64_t length : sequence_lengths) {
    if (length <= 0 || length > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("IndexedDatasetWriter for ", prefix_, ": sequence length ", length,
                       " is not in [1, 2^31); the index stores lengths as int32"));
    }
    sum += length;
  }
  if (sum != static_cast<int64_t>(tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("IndexedDatasetWriter for ", prefix_, ": sequence lengths sum to ", sum,
                     " but the document has ", tokens.size(), " tokens"));
  }
  const auto [low, high] = TokenRange(dtype_);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < low || tokens[i] > high) {
      return absl::OutOfRangeError(
          absl::StrCat("IndexedDatasetWriter for ", prefix_, ": token ", tokens[i], " at position ",
                       i, " of document ", num_documents(), " does not fit the dataset dtype ",
                       TokenDtypeName(static_cast<uint8_t>(dtype_)), " [", low, ", ", high, "]"));
    }
  }
  switch (dtype_) {
    case TokenDtype::kUInt8:
      AppendAs<uint8_t>(tokens, &buffer_);
      break;
    case TokenDtype::kInt8:
      AppendAs<int8_t>(tokens, &buffer_);
      break;
    case TokenDtype::kInt16:
      AppendAs<int16_t>(tokens, &buffer_);
      break;
    case TokenDtype::kUInt16:
      AppendAs<uint16_t>(tokens, &buffer_);
      break;
    case TokenDtype::kInt32:
      AppendAs<int32_t>(tokens, &buffer_);
      break;
    case TokenDtype::kInt64:
      AppendAs<int64_t>(tokens, &buffer_);
      break;
    default:
      MOE_CHECK(false) << "IndexedDatasetWriter: float dtype passed Create()";
  }
  for (const int64_t length : sequence_lengths) lengths_.push_back(static_cast<int32_t>(length));
  document_indices_.push_back(static_cast<int64_t>(lengths_.size()));
  num_tokens_ += sum;
  if (buffer_.size() >= kWriteChunkBytes) return Flush();
  return absl::OkStatus();
}

absl::Status IndexedDatasetWriter::Flush() {
  absl::Status status = bin_.Write(buffer_.data(), buffer_.size());
  buffer_.clear();
  return status;
}

absl::Status IndexedDatasetWriter::Finalize() {
  if (finalized_) {
    return absl::FailedPreconditionError(
        absl::StrCat("IndexedDatasetWriter for ", prefix_, ": Finalize called twice"));
  }
  finalized_ = true;
  const uint8_t code = static_cast<uint8_t>(dtype_);
  const int64_t item_size = TokenDtypeSize(code);
  std::string index;
  index.reserve(kHeaderBytes + lengths_.size() * 12 + document_indices_.size() * 8);
  index.append(kMagic, sizeof(kMagic));
  AppendPod(&index, kVersion);
  AppendPod(&index, code);
  AppendPod(&index, static_cast<uint64_t>(lengths_.size()));
  AppendPod(&index, static_cast<uint64_t>(document_indices_.size()));
  for (const int32_t length : lengths_) AppendPod(&index, length);
  int64_t pointer = 0;
  for (const int32_t length : lengths_) {
    AppendPod(&index, pointer);
    pointer += int64_t{length} * item_size;
  }
  for (const int64_t d : document_indices_) AppendPod(&index, d);

  // The index is complete on disk under its temporary name before the data is
  // renamed into place, so only two renames separate "old data set" from "new".
  AtomicFileWriter idx;
  if (absl::Status s = idx.Open(IndexedDatasetIdxPath(prefix_)); !s.ok()) return s;
  if (absl::Status s = idx.Write(index.data(), index.size()); !s.ok()) return s;
  if (absl::Status s = Flush(); !s.ok()) return s;
  if (absl::Status s = bin_.Commit(); !s.ok()) return s;
  return idx.Commit();
}

// ---------------------------------------------------------------------------
// Reader

int64_t IndexedDataset::sequence_length(int64_t i) const {
  MOE_CHECK(i >= 0 && i < num_sequences()) << "IndexedDataset " << prefix_ << ": sequence " << i
                                           << " out of range [0, " << num_sequences() << ")";
  return lengths_[static_cast<size_t>(i)];
}

absl::StatusOr<IndexedDataset> IndexedDataset::Open(const std::string& prefix) {
  const std::string idx_path = IndexedDatasetIdxPath(prefix);
  const std::string bin_path = IndexedDatasetBinPath(prefix);
  absl::StatusOr<RandomAccessFile> idx = RandomAccessFile::Open(idx_path);
  if (!idx.ok()) return idx.status();
  const uint64_t idx_size = idx->size();
  if (idx_size < kHeaderBytes) {
    return Invalid(idx_path, absl::StrCat("the file has ", idx_size, " bytes, fewer than the ",
                                          kHeaderBytes, "-byte header (truncated?)"));
  }
  char header[kHeaderBytes];
  if (absl::Status s = idx->ReadAt(0, kHeaderBytes, header); !s.ok()) return s;
  if (std::memcmp(header, kMagic, sizeof(kMagic)) != 0) {
    return Invalid(idx_path, "bad magic: the file does not start with \"MMIDIDX\\0\\0\"");
  }
  const auto version = LoadPod<uint64_t>(header + 9);
  if (version != kVersion) {
    return Invalid(idx_path, absl::StrCat("version is ", version, "; only version 1 is supported"));
  }
  const auto code = LoadPod<uint8_t>(header + 17);
  if (TokenDtypeSize(code) == 0) {
    return Invalid(idx_path, absl::StrCat("dtype code is ", int{code},
                                          "; Megatron's codes are 1 to 8 (1 uint8 ... 8 uint16)"));
  }
  if (!IsIntegerCode(code)) {
    return Invalid(idx_path, absl::StrCat("dtype code ", int{code}, " (", TokenDtypeName(code),
                                          ") is not an integer type and cannot hold tokens"));
  }
  const auto num_sequences = LoadPod<uint64_t>(header + 18);
  const auto num_doc_indices = LoadPod<uint64_t>(header + 26);
  // Bound the counts by the file size before multiplying, so that no product
  // can overflow.
  const uint64_t body = idx_size - kHeaderBytes;
  if (num_sequences > body / 12 || num_doc_indices > body / 8) {
    return Invalid(idx_path,
                   absl::StrCat("sequence count ", num_sequences, " and document index count ",
                                num_doc_indices, " need more bytes than the file's ", idx_size,
                                " (truncated?)"));
  }
  const uint64_t expected = kHeaderBytes + num_sequences * 12 + num_doc_indices * 8;
  // Multimodal data sets append one int8 mode per sequence, which we ignore.
  if (idx_size != expected && idx_size != expected + num_sequences) {
    return Invalid(idx_path,
                   absl::StrCat(num_sequences, " sequences and ", num_doc_indices,
                                " document indices take ", expected, " bytes, but the file has ",
                                idx_size, idx_size < expected ? " (truncated?)" : ""));
  }
  if (num_doc_indices == 0) {
    return Invalid(idx_path, "document index count is 0; it must be documents + 1 >= 1");
  }

  std::string arrays(static_cast<size_t>(expected - kHeaderBytes), '\0');
  if (absl::Status s = idx->ReadAt(kHeaderBytes, arrays.size(), arrays.data()); !s.ok()) return s;
  const size_t s_count = static_cast<size_t>(num_sequences);
  const size_t d_count = static_cast<size_t>(num_doc_indices);
  IndexedDataset dataset;
  dataset.prefix_ = prefix;
  dataset.dtype_ = static_cast<TokenDtype>(code);
  dataset.item_size_ = TokenDtypeSize(code);
  dataset.lengths_.resize(s_count);
  dataset.pointers_.resize(s_count);
  dataset.document_indices_.resize(d_count);
  // The int64 arrays start at 34 + 4 S: unaligned, hence copies.
  const char* p = arrays.data();
  std::memcpy(dataset.lengths_.data(), p, s_count * 4);
  std::memcpy(dataset.pointers_.data(), p + s_count * 4, s_count * 8);
  std::memcpy(dataset.document_indices_.data(), p + s_count * 12, d_count * 8);

  const int64_t item = dataset.item_size_;
  int64_t end = 0;  // byte offset where the next sequence must start
  for (size_t i = 0; i < s_count; ++i) {
    const int64_t length = dataset.lengths_[i];
    if (length < 0) {
      return Invalid(idx_path, absl::StrCat("lengths[", i, "] = ", length, " is negative"));
    }
    if (dataset.pointers_[i] != end) {
      return Invalid(idx_path,
                     absl::StrCat("pointers[", i, "] = ", dataset.pointers_[i], " but ",
                                  i == 0 ? "the first pointer must be 0"
                                         : absl::StrCat("pointers[", i - 1, "] + lengths[", i - 1,
                                                        "] * ", item, " = ", end)));
    }
    end += length * item;
    dataset.total_tokens_ += length;
    if (end > (int64_t{1} << 62)) {
      return Invalid(idx_path,
                     absl::StrCat("lengths up to ", i, " add up to more than 2^62 bytes"));
    }
  }
  const std::vector<int64_t>& docs = dataset.document_indices_;
  if (docs[0] != 0) {
    return Invalid(idx_path, absl::StrCat("document_indices[0] = ", docs[0], "; it must be 0"));
  }
  for (size_t d = 1; d < d_count; ++d) {
    if (docs[d] < docs[d - 1]) {
      return Invalid(idx_path, absl::StrCat("document_indices decrease at ", d, ": ", docs[d - 1],
                                            " then ", docs[d]));
    }
  }
  if (docs.back() != static_cast<int64_t>(num_sequences)) {
    return Invalid(idx_path,
                   absl::StrCat("document_indices[-1] = ", docs.back(),
                                " but the sequence count (lengths.size) is ", num_sequences));
  }

  absl::StatusOr<RandomAccessFile> bin = RandomAccessFile::Open(bin_path);
  if (!bin.ok()) return bin.status();
  if (bin->size() < static_cast<uint64_t>(end)) {
    return absl::InvalidArgumentError(absl::StrCat(
        bin_path, " has ", bin->size(), " bytes, but ", idx_path,
        " points past its end: the last sequence ends at byte ", end,
        " (pointers[-1] + lengths[-1] * ", item, "); is the .bin truncated or from another run?"));
  }
  dataset.bin_ = *std::move(bin);
  return dataset;
}

absl::Status IndexedDataset::ReadTokens(int64_t seq, int64_t offset, int64_t count,
                                        int32_t* out) const {
  if (seq < 0 || seq >= num_sequences()) {
    return absl::OutOfRangeError(absl::StrCat("IndexedDataset ", prefix_, ": sequence ", seq,
                                              " out of range [0, ", num_sequences(), ")"));
  }
  const int64_t length = lengths_[static_cast<size_t>(seq)];
  if (offset < 0 || count < 0 || offset > length || count > length - offset) {
    return absl::OutOfRangeError(absl::StrCat("IndexedDataset ", prefix_, ": tokens [", offset,
                                              ", ", offset + count, ") of sequence ", seq,
                                              " are outside its ", length, " tokens"));
  }
  if (count == 0) return absl::OkStatus();
  const uint64_t start =
      static_cast<uint64_t>(pointers_[static_cast<size_t>(seq)] + offset * item_size_);
  const uint64_t bytes = static_cast<uint64_t>(count * item_size_);
  if (dtype_ == TokenDtype::kInt32) return bin_.ReadAt(start, bytes, out);
  std::string raw(static_cast<size_t>(bytes), '\0');
  if (absl::Status s = bin_.ReadAt(start, bytes, raw.data()); !s.ok()) return s;
  const std::string& path = bin_.path();
  switch (dtype_) {
    case TokenDtype::kUInt8:
      return ConvertTokens<uint8_t>(raw.data(), count, out, path);
    case TokenDtype::kInt8:
      return ConvertTokens<int8_t>(raw.data(), count, out, path);
    case TokenDtype::kInt16:
      return ConvertTokens<int16_t>(raw.data(), count, out, path);
    case TokenDtype::kUInt16:
      return ConvertTokens<uint16_t>(raw.data(), count, out, path);
    case TokenDtype::kInt64:
      return ConvertTokens<int64_t>(raw.data(), count, out, path);
    default:
      MOE_CHECK(false) << "IndexedDataset: float dtype passed Open()";
  }
  return absl::OkStatus();
}

}  // namespace moe
