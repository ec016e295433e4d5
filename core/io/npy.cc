#include "core/io/npy.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/io/file_util.h"

namespace moe {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
// numpy aligns the data to 64 bytes and leaves room in the header for the
// first dimension to grow to 21 digits (numpy/lib/format.py).
constexpr size_t kArrayAlign = 64;
constexpr size_t kGrowthAxisMaxDigits = 21;

// An element type we can load: its size, whether it is signed/float, and
// the Tensor dtype it lands in.
struct NpyType {
  char kind;  // 'f', 'i', 'u'
  size_t bytes;
  DType dtype;
};

std::optional<NpyType> LookUpType(char kind, size_t bytes) {
  if (bytes != 1 && bytes != 2 && bytes != 4 && bytes != 8) return std::nullopt;
  if (kind == 'f' && bytes == 4) return NpyType{kind, bytes, DType::kF32};
  if (kind == 'f' && bytes == 8) return NpyType{kind, bytes, DType::kF64};
  if (kind == 'i' && bytes <= 4) return NpyType{kind, bytes, DType::kI32};
  if (kind == 'u' && bytes <= 2) return NpyType{kind, bytes, DType::kI32};
  if ((kind == 'i' || kind == 'u') && bytes <= 8) return NpyType{kind, bytes, DType::kI64};
  return std::nullopt;
}

absl::Status Invalid(const std::string& path, const std::string& detail) {
  return absl::InvalidArgumentError(absl::StrCat(path, " is not a valid .npy file: ", detail,
                                                 ". Re-create it with numpy.save(path, array)"));
}

// The header dict as numpy writes it. Values we do not expect are kept as
// their type only, so that the error can name them.
struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<Shape> shape;
};

// Parses the Python literal numpy writes: a dict of 'descr' (str),
// 'fortran_order' (bool) and 'shape' (tuple of ints).
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  absl::Status Parse(Header* header) {
    SkipSpace();
    if (!Eat('{')) return Error("the header does not start with '{'");
    while (true) {
      SkipSpace();
      if (Eat('}')) break;
      std::string key;
      if (absl::Status s = ParseString(&key); !s.ok()) return s;
      SkipSpace();
      if (!Eat(':')) return Error(absl::StrCat("expected ':' after '", key, "'"));
      SkipSpace();
      absl::Status s;
      if (key == "descr") {
        std::string descr;
        s = ParseString(&descr);
        header->descr = descr;
      } else if (key == "fortran_order") {
        if (Consume("True")) {
          header->fortran_order = true;
        } else if (Consume("False")) {
          header->fortran_order = false;
        } else {
          s = Error("fortran_order must be True or False");
        }
      } else if (key == "shape") {
        Shape shape;
        s = ParseShape(&shape);
        header->shape = shape;
      } else {
        s = Error(absl::StrCat("unexpected key '", key,
                               "' (a .npy header has exactly descr, fortran_order and shape)"));
      }
      if (!s.ok()) return s;
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat('}')) break;
      return Error("expected ',' or '}' in the header dict");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the header dict");
    if (!header->descr || !header->fortran_order || !header->shape) {
      return Error("the header must give descr, fortran_order and shape");
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return Invalid(path_,
                   absl::StrCat("bad header ", std::string(text_.substr(0, 200)), ": ", what));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Eat(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  absl::Status ParseString(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return Error("expected a quoted string");
    }
    const char quote = text_[pos_++];
    const size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) return Error("unterminated string");
    *out = std::string(text_.substr(pos_, end - pos_));
    if (out->find('\\') != std::string::npos) return Error("escapes are not supported in strings");
    pos_ = end + 1;
    return absl::OkStatus();
  }
  absl::Status ParseShape(Shape* shape) {
    if (!Eat('(')) return Error("shape must be a tuple of integers like (2, 3)");
    SkipSpace();
    while (!Eat(')')) {
      const size_t start = pos_;
      int64_t value = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        if (value > (INT64_MAX - 9) / 10) return Error("a dimension is too large");
        value = value * 10 + (text_[pos_++] - '0');
      }
      if (pos_ == start) return Error("shape must be a tuple of non-negative integers");
      Eat('L');  // Python 2 wrote long integers as 3L.
      shape->push_back(value);
      SkipSpace();
      if (Eat(',')) {
        SkipSpace();
        continue;
      }
      if (Eat(')')) break;
      return Error("expected ',' or ')' in shape");
    }
    return absl::OkStatus();
  }

  std::string_view text_;
  const std::string& path_;
  size_t pos_ = 0;
};

uint64_t ReadLittleEndian(const unsigned char* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = bytes; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

// Converts `count` elements of `type` (in file byte order) into `out`.
absl::Status Convert(const std::string& path, const unsigned char* in, int64_t count,
                     const NpyType& type, bool big_endian, Tensor& out) {
  const size_t b = type.bytes;
  for (int64_t i = 0; i < count; ++i) {
    unsigned char e[8];
    const unsigned char* src = in + static_cast<size_t>(i) * b;
    for (size_t k = 0; k < b; ++k) e[k] = big_endian ? src[b - 1 - k] : src[k];
    if (type.kind == 'f') {
      if (b == 4) {
        std::memcpy(out.data<float>() + i, e, 4);
      } else {
        std::memcpy(out.data<double>() + i, e, 8);
      }
      continue;
    }
    const uint64_t bits = ReadLittleEndian(e, b);
    int64_t value;
    if (type.kind == 'u') {
      if (bits > static_cast<uint64_t>(INT64_MAX)) {
        return Invalid(path, absl::StrCat("element ", i, " is ", bits,
                                          ", too large for int64 (the largest integer type here)"));
      }
      value = static_cast<int64_t>(bits);
    } else {
      const int shift = static_cast<int>(64 - 8 * b);  // sign-extend
      value = static_cast<int64_t>(bits << shift) >> shift;
    }
    if (out.dtype() == DType::kI32) {
      out.data<int32_t>()[i] = static_cast<int32_t>(value);
    } else {
      out.data<int64_t>()[i] = value;
    }
  }
  return absl::OkStatus();
}

std::string NpyDescr(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "<f4";
    case DType::kF64:
      return "<f8";
    case DType::kI32:
      return "<i4";
    case DType::kI64:
      return "<i8";
    case DType::kBF16:
      break;
  }
  return "";
}

}  // namespace

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  absl::StatusOr<RandomAccessFile> file = RandomAccessFile::Open(path);
  if (!file.ok()) return file.status();
  const uint64_t file_bytes = file->size();
  unsigned char prefix[12];
  if (file_bytes < 10) {
    return Invalid(path, absl::StrCat("it is only ", file_bytes, " bytes long"));
  }
  if (absl::Status s = file->ReadAt(0, std::min<uint64_t>(12, file_bytes), prefix); !s.ok()) {
    return s;
  }
  if (std::memcmp(prefix, kMagic, kMagicBytes) != 0) {
    return Invalid(path, "it does not start with the .npy magic \\x93NUMPY");
  }
  const int major = prefix[6];
  if (major < 1 || major > 3) {
    return Invalid(path, absl::StrCat("format version ", major, ".", static_cast<int>(prefix[7]),
                                      " is unknown (numpy writes 1.0, 2.0 and 3.0)"));
  }
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (file_bytes < 8 + length_bytes) return Invalid(path, "it is truncated inside its prefix");
  const uint64_t header_bytes = ReadLittleEndian(prefix + 8, length_bytes);
  const uint64_t data_start = 8 + length_bytes + header_bytes;
  if (data_start > file_bytes) {
    return Invalid(path, absl::StrCat("it is truncated: the header should be ", header_bytes,
                                      " bytes, but the file is only ", file_bytes, " bytes"));
  }
  std::string text(header_bytes, '\0');
  if (absl::Status s = file->ReadAt(8 + length_bytes, header_bytes, text.data()); !s.ok()) {
    return s;
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  Header header;
  if (absl::Status s = HeaderParser(text, path).Parse(&header); !s.ok()) return s;

  const std::string& descr = *header.descr;
  // descr is byte order ('<', '>', '|', '=') then kind and size, as in '<f4'.
  std::optional<NpyType> type;
  bool big_endian = false;
  if (descr.size() >= 3 && std::string_view("<>|=").find(descr[0]) != std::string_view::npos &&
      std::all_of(descr.begin() + 2, descr.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      descr.size() <= 4) {
    const size_t bytes = static_cast<size_t>(std::stoi(descr.substr(2)));
    big_endian = descr[0] == '>';
    if (bytes == 1 || descr[0] != '|') type = LookUpType(descr[1], bytes);
  }
  if (!type) {
    return absl::UnimplementedError(absl::StrCat(
        path, " holds elements of numpy dtype '", descr,
        "', which this framework does not load; it loads float32, float64 and integer arrays. "
        "Convert it in Python, e.g. np.save(path, array.astype(np.float32))"));
  }
  if (*header.fortran_order) {
    return absl::UnimplementedError(absl::StrCat(
        path,
        " stores its array in Fortran (column-major) order, which this framework does not "
        "load; save np.ascontiguousarray(array) instead"));
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (int64_t d : *header.shape) {
    overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel);
  }
  uint64_t data_bytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t{type->bytes}, &data_bytes);
  if (overflow || numel > static_cast<uint64_t>(INT64_MAX)) {
    return Invalid(path, absl::StrCat("shape ", ShapeToString(*header.shape), " is too large"));
  }
  const uint64_t available = file_bytes - data_start;
  if (available < data_bytes) {
    return Invalid(
        path, absl::StrCat("it is truncated: shape ", ShapeToString(*header.shape), " of '", descr,
                           "' needs ", data_bytes, " bytes of data, but only ", available,
                           " follow the header"));
  }
  if (available > data_bytes) {
    return Invalid(
        path, absl::StrCat("it has ", available - data_bytes, " unexpected bytes after the ",
                           data_bytes, " bytes of data that shape ", ShapeToString(*header.shape),
                           " of '", descr, "' needs"));
  }
  Tensor t = Tensor::Empty(*header.shape, type->dtype);
  if (!big_endian && type->kind != 'u' && type->bytes == DTypeSize(type->dtype)) {
    if (absl::Status s = file->ReadAt(data_start, data_bytes, t.raw_data()); !s.ok()) return s;
    return t;
  }
  std::vector<unsigned char> raw(data_bytes);
  if (absl::Status s = file->ReadAt(data_start, data_bytes, raw.data()); !s.ok()) return s;
  if (absl::Status s = Convert(path, raw.data(), t.numel(), *type, big_endian, t); !s.ok()) {
    return s;
  }
  return t;
}

absl::Status WriteNpy(const std::string& path, const Tensor& t) {
  if (!t.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write ", path, ": the tensor is undefined"));
  }
  const std::string descr = NpyDescr(t.dtype());
  if (descr.empty()) {
    // Only kBF16 gets here.
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write ", path, ": NumPy has no bfloat16 type for the ",
                     t.ShapeString(), " bf16 tensor; Cast it to kF32 first"));
  }
  // Python's repr of the shape tuple: (), (5,), (2, 3).
  std::vector<std::string> dims;
  for (int64_t d : t.shape()) dims.push_back(absl::StrCat(d));
  std::string shape = absl::StrCat("(", absl::StrJoin(dims, ", "), dims.size() == 1 ? ",)" : ")");
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape, ", }");
  if (!dims.empty()) header.append(kGrowthAxisMaxDigits - dims[0].size(), ' ');
  // Version 1.0 stores the header length in 16 bits; 2.0 in 32.
  size_t length_bytes = 2;
  size_t padded = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const size_t unpadded = kMagicBytes + 2 + length_bytes + header.size() + 1;
    padded = header.size() + 1 + (kArrayAlign - unpadded % kArrayAlign);
    if (length_bytes == 2 && padded > 0xffff) {
      length_bytes = 4;
      continue;
    }
    break;
  }
  header.append(padded - 1 - header.size(), ' ');
  header.push_back('\n');

  std::string prefix(kMagic, kMagicBytes);
  prefix.push_back(static_cast<char>(length_bytes == 2 ? 1 : 2));
  prefix.push_back(0);
  for (size_t i = 0; i < length_bytes; ++i) {
    prefix.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  }
  const Tensor host = t.device() == Device::kCpu ? t : t.To(Device::kCpu);
  AtomicFileWriter writer;
  if (absl::Status s = writer.Open(path); !s.ok()) return s;
  if (absl::Status s = writer.Write(prefix.data(), prefix.size()); !s.ok()) return s;
  if (absl::Status s = writer.Write(header.data(), header.size()); !s.ok()) return s;
  if (absl::Status s = writer.Write(host.raw_data(), host.nbytes()); !s.ok()) return s;
  return writer.Commit();
}

}  // namespace moe
