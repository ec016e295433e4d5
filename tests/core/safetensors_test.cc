#include "core/io/safetensors.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/io/file_util.h"
#include "core/json.h"

namespace moe {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/safetensors_test_" + std::to_string(::getpid()) + "_" + name;
}

bool FileExists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0;
}

// Writes without fsync: these tests write thousands of scratch files.
void WritePlain(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Tensor with distinct, exactly representable values in every element.
Tensor Sample(const Shape& shape, DType dtype, int seed) {
  Tensor t = Tensor::Empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case DType::kI32:
        t.data<int32_t>()[i] = static_cast<int32_t>(i * 7919 - 1000000 * seed);
        break;
      case DType::kI64:
        t.data<int64_t>()[i] = (int64_t{1} << 53) + 1 + i * 1000003 - seed;  // beyond double
        break;
      default:
        t.SetFromDouble(i, (static_cast<double>(i) - 2.5) * 0.375 + seed);
    }
  }
  return t;
}

void ExpectSameBytes(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  if (a.nbytes() > 0) {  // empty tensors have no storage
    EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0) << what;
  }
}

// A file from a header text and a data buffer, as a broken writer might make.
std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                     uint64_t header_length_field) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>(header_length_field >> (8 * i)));
  bytes += header + data;
  const std::string path = TempPath(name);
  WritePlain(path, bytes);
  return path;
}
std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data) {
  return WriteRaw(name, header, data, header.size());
}

void ExpectOpenError(const std::string& path, std::initializer_list<std::string_view> expected) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok()) << path << " opened without error";
  const std::string message(file.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  for (std::string_view piece : expected) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "error is: " << message << "\n  lacks: " << piece;
  }
}

TEST(SafetensorsTest, RoundTripsEveryDTypeScalarAndZeroSize) {
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"model.f32", Sample({2, 3}, DType::kF32, 1)},
      {"bf16.odd", Sample({5}, DType::kBF16, 2)},  // 10 bytes: later tensors are unaligned
      {"f64", Sample({2, 2}, DType::kF64, 3)},
      {"ids.i32", Sample({3}, DType::kI32, 4)},
      {"ids.i64", Sample({2, 1}, DType::kI64, 5)},
      {"scalar", Sample({}, DType::kF32, 6)},
      {"empty", Sample({0, 4}, DType::kF32, 7)},
      {"empty.i64", Sample({3, 0}, DType::kI64, 8)},
      {"scalar.bf16", Sample({}, DType::kBF16, 9)},
  };
  const std::string path = TempPath("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  EXPECT_FALSE(FileExists(path + ".tmp." + std::to_string(::getpid())));

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->names().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, expected] = tensors[i];
    EXPECT_EQ(file->names()[i], name);  // the order given
    ASSERT_TRUE(file->Contains(name));
    absl::StatusOr<Tensor> t = file->Read(name);
    ASSERT_TRUE(t.ok()) << t.status();
    ExpectSameBytes(*t, expected, name);
  }
  EXPECT_EQ(file->Find("scalar")->shape, Shape{});
  EXPECT_EQ(file->Find("bf16.odd")->dtype_name, "BF16");
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
}

TEST(SafetensorsTest, WritesThePaddedHeaderInGivenOrder) {
  const std::string path = TempPath("layout.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"b", Sample({3}, DType::kBF16, 0)}, {"a", Sample({1}, DType::kI64, 0)}},
                  {{"step", "10"}, {"format", "pt"}})
                  .ok());
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  ASSERT_TRUE(bytes.ok());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>((*bytes)[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes->size(), 8 + n + 6 + 8);
  const std::string header = bytes->substr(8, n);
  const std::string json = R"({"__metadata__":{"format":"pt","step":"10"},)"
                           R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
                           R"("a":{"dtype":"I64","shape":[1],"data_offsets":[6,14]}})";
  EXPECT_EQ(header, json + std::string(n - json.size(), ' '));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("step"), "10");
}

TEST(SafetensorsTest, ReadIntoAViewOfAFlatBuffer) {
  const std::string path = TempPath("into.safetensors");
  const Tensor w = Sample({2, 3}, DType::kF32, 1);
  ASSERT_TRUE(WriteSafetensors(path, {{"w", w}}).ok());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  Tensor flat = Tensor::Zeros({10}, DType::kF32);
  Tensor view = flat.View(2, {2, 3});
  ASSERT_TRUE(file->ReadInto("w", view).ok());
  ExpectSameBytes(view, w, "view");
  EXPECT_EQ(flat.data<float>()[0], 0.0f);
  EXPECT_EQ(flat.data<float>()[8], 0.0f);

  Tensor wrong = Tensor::Zeros({3, 2}, DType::kF32);
  const absl::Status s = file->ReadInto("w", wrong);
  EXPECT_NE(s.message().find("tensor \"w\" in " + path +
                             " is F32 [2, 3], but the destination is "
                             "f32[3, 2] on cpu"),
            std::string::npos)
      << s;
  const absl::StatusOr<Tensor> missing = file->Read("v");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("has no tensor named \"v\""), std::string::npos);
}

TEST(SafetensorsTest, OpensOtherDTypesButRefusesToReadThem) {
  const std::string path = WriteRaw("f16.safetensors",
                                    R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                                    R"("q":{"dtype":"F4","shape":[2,2],"data_offsets":[4,6]},)"
                                    R"("f":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}})",
                                    std::string(10, '\0'));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->Contains("h"));
  EXPECT_FALSE(file->Find("h")->dtype.has_value());
  const absl::StatusOr<Tensor> h = file->Read("h");
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("has dtype F16, which this framework does not load"),
            std::string::npos)
      << h.status();
  EXPECT_TRUE(file->Read("f").ok());
}

TEST(SafetensorsTest, AcceptsAnEmptyFileAndNullMetadata) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(WriteRaw("empty.safetensors", R"({"__metadata__":null}   )", ""));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->names().empty());
  EXPECT_TRUE(file->metadata().empty());
}

TEST(SafetensorsTest, RejectsTruncatedAndOversizedFiles) {
  ExpectOpenError(TempPath("missing"), {"cannot open", "No such file or directory"});
  {
    const std::string path = TempPath("tiny");
    ASSERT_TRUE(WriteFileAtomically(path, std::string("\x05\0\0\0\0", 5)).ok());
    ExpectOpenError(path, {"is 5 bytes long, shorter than the 8-byte header length field"});
  }
  ExpectOpenError(WriteRaw("short_header", "{}", "", 100),
                  {"truncated: the header length field says 100 bytes, but only 2 bytes follow"});
  ExpectOpenError(WriteRaw("huge_header", "{}", "", 100'000'001),
                  {"header length field says 100000001 bytes, over the limit of 100000000"});
  ExpectOpenError(WriteRaw("max_header", "{}", "", ~uint64_t{0}),
                  {"says 18446744073709551615 bytes, over the limit"});
  // Cutting a valid file anywhere leaves an invalid one.
  const std::string path = TempPath("cut.safetensors");
  ASSERT_TRUE(WriteSafetensors(
                  path, {{"a", Sample({3}, DType::kF32, 0)}, {"b", Sample({2}, DType::kI64, 0)}})
                  .ok());
  const std::string bytes = *ReadFileToString(path);
  for (size_t n = 0; n < bytes.size(); ++n) {
    WritePlain(path, bytes.substr(0, n));
    EXPECT_FALSE(SafetensorsFile::Open(path).ok()) << "prefix of " << n << " bytes";
  }
}

TEST(SafetensorsTest, RejectsHeadersThatAreNotAJsonObject) {
  ExpectOpenError(WriteRaw("no_json", "", ""), {"header is not valid JSON", "unexpected end"});
  ExpectOpenError(WriteRaw("bad_json", R"({"a": {"dtype": "F32",})", ""),
                  {"header is not valid JSON", "safetensors header) at line 1, column 23"});
  ExpectOpenError(WriteRaw("not_utf8", "{\"\xff\": 1}", ""),
                  {"header is not valid JSON", "invalid UTF-8"});
  ExpectOpenError(WriteRaw("array", "[]", ""),
                  {"header must be a JSON object, but is a JSON array"});
  ExpectOpenError(WriteRaw("not_entry", R"({"a": 3})", ""),
                  {"tensor \"a\" must map to an object with dtype, shape and data_offsets"});
}

TEST(SafetensorsTest, RejectsBadTensorEntries) {
  const std::string data(16, '\0');
  ExpectOpenError(WriteRaw("no_dtype", R"({"a":{"shape":[4],"data_offsets":[0,16]}})", data),
                  {"tensor \"a\" has no \"dtype\" field"});
  ExpectOpenError(WriteRaw("no_shape", R"({"a":{"dtype":"F32","data_offsets":[0,16]}})", data),
                  {"tensor \"a\" has no \"shape\" field"});
  ExpectOpenError(WriteRaw("no_offsets", R"({"a":{"dtype":"F32","shape":[4]}})", data),
                  {"tensor \"a\" has no \"data_offsets\" field"});
  ExpectOpenError(
      WriteRaw("unknown_dtype", R"({"a":{"dtype":"F17","shape":[4],"data_offsets":[0,16]}})", data),
      {"tensor \"a\" has unknown dtype \"F17\" (known: BOOL, F4"});
  ExpectOpenError(
      WriteRaw("dtype_type", R"({"a":{"dtype":32,"shape":[4],"data_offsets":[0,16]}})", data),
      {"dtype must be a string, got a JSON number"});
  for (const char* shape : {"[-4]", "[4.5]", "\"4\"", "[[4]]"}) {
    ExpectOpenError(WriteRaw("bad_shape",
                             absl::StrCat(R"({"a":{"dtype":"F32","shape":)", shape,
                                          R"(,"data_offsets":[0,16]}})"),
                             data),
                    {"shape must be an array of non-negative integers, got ", shape});
  }
  for (const char* offsets : {"[8,4]", "[0]", "[-4,12]", "[0,16.5]", "{}"}) {
    ExpectOpenError(
        WriteRaw("bad_offsets",
                 absl::StrCat(R"({"a":{"dtype":"F32","shape":[4],)", R"("data_offsets":)", offsets,
                              "}}"),
                 data),
        {"data_offsets must be [begin, end] with integers 0 <= begin <= end, got ", offsets});
  }
  ExpectOpenError(
      WriteRaw("size_mismatch", R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
               std::string(12, '\0')),
      {"tensor \"a\": data_offsets [0, 12] span 12 bytes, but F32 [2, 2] needs 16 bytes"});
  ExpectOpenError(
      WriteRaw("overflow",
               R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})",
               ""),
      {"has more elements than fit in 64 bits"});
  ExpectOpenError(WriteRaw("subbyte", R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})",
                           std::string(1, '\0')),
                  {"3 elements of F4 (4 bits each) do not fill whole bytes"});
}

TEST(SafetensorsTest, RejectsBuffersTheTensorsDoNotTile) {
  ExpectOpenError(WriteRaw("past_end", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           std::string(6, '\0')),
                  {"tensor \"a\": data_offsets [0, 8] run past the end of the 6-byte data buffer"});
  ExpectOpenError(WriteRaw("gap",
                           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                           std::string(12, '\0')),
                  {"the data buffer has a gap: bytes [4, 8) belong to no tensor"});
  ExpectOpenError(
      WriteRaw("leading_gap", R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               std::string(8, '\0')),
      {"gap: bytes [0, 4) belong to no tensor (tensor \"b\" starts at 4)"});
  ExpectOpenError(WriteRaw("overlap",
                           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           std::string(8, '\0')),
                  {"tensors \"a\" [0, 8] and \"b\" [4, 8] overlap"});
  // An empty tensor must sit at a boundary, not inside another tensor.
  ExpectOpenError(WriteRaw("empty_inside",
                           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
                           std::string(8, '\0')),
                  {"tensors \"a\" [0, 8] and \"z\" [4, 4] overlap"});
  ExpectOpenError(
      WriteRaw("trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
               std::string(8, '\0')),
      {"the data buffer has 4 trailing bytes after the last tensor, which ends at byte 4 of 8"});
  ExpectOpenError(WriteRaw("no_tensors_trailing", "{}", std::string(3, '\0')),
                  {"3 trailing bytes"});
  // Tensors listed out of buffer order are fine, as long as they tile it.
  EXPECT_TRUE(
      SafetensorsFile::Open(WriteRaw("reordered",
                                     R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                     R"("e":{"dtype":"I64","shape":[0,2],"data_offsets":[8,8]},)"
                                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                     std::string(8, '\0')))
          .ok());
}

TEST(SafetensorsTest, RejectsDuplicatesAndBadMetadata) {
  ExpectOpenError(WriteRaw("duplicate",
                           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           std::string(8, '\0')),
                  {"tensor name \"a\" appears twice in the header"});
  ExpectOpenError(WriteRaw("meta_number", R"({"__metadata__":{"format":"pt","step":10}})", ""),
                  {"__metadata__ value of \"step\" must be a string, got a JSON number (10)"});
  ExpectOpenError(WriteRaw("meta_array", R"({"__metadata__":["pt"]})", ""),
                  {"__metadata__ must be an object of strings, got a JSON array"});
  ExpectOpenError(WriteRaw("meta_twice", R"({"__metadata__":{},"__metadata__":{}})", ""),
                  {"__metadata__ appears twice"});
  ExpectOpenError(WriteRaw("meta_key_twice", R"({"__metadata__":{"k":"1","k":"2"}})", ""),
                  {"__metadata__ key \"k\" appears twice"});
}

TEST(SafetensorsTest, SurvivesCorruptedHeaderBytes) {
  // Every single-byte change of the header gives a clean error or a file
  // whose tensors all read back; never a crash.
  const std::string path = TempPath("flip.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"a", Sample({2, 2}, DType::kF32, 0)},
                                      {"b", Sample({3}, DType::kBF16, 0)},
                                      {"c", Sample({}, DType::kI64, 0)}})
                  .ok());
  const std::string bytes = *ReadFileToString(path);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i)
    header_bytes = (header_bytes << 8) | static_cast<unsigned char>(bytes[i]);
  const size_t header_end = 8 + header_bytes;
  const std::string corrupt = TempPath("corrupt.safetensors");
  int opened = 0;
  for (size_t i = 0; i < header_end; ++i) {
    for (unsigned char value : {0x00, 0x22, 0x30, 0x39, 0x5b, 0x7d, 0xff}) {
      std::string changed = bytes;
      changed[i] = static_cast<char>(value);
      WritePlain(corrupt, changed);
      absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(corrupt);
      if (!file.ok()) continue;
      ++opened;
      for (const std::string& name : file->names()) {
        if (file->Find(name)->dtype.has_value()) {
          EXPECT_TRUE(file->Read(name).ok()) << name;
        }
      }
    }
  }
  EXPECT_GT(opened, 0);  // changes inside names and padding keep the file valid
}

TEST(SafetensorsTest, WriterRefusesBadInputAndKeepsTheOldFile) {
  const std::string path = TempPath("keep.safetensors");
  const Tensor a = Sample({2}, DType::kF32, 0);
  ASSERT_TRUE(WriteSafetensors(path, {{"a", a}}).ok());
  const std::string before = *ReadFileToString(path);

  absl::Status s = WriteSafetensors(path, {{"a", a}, {"a", a}});
  EXPECT_NE(s.message().find("cannot write safetensors file " + path +
                             ": tensor name \"a\" is given twice"),
            std::string::npos)
      << s;
  s = WriteSafetensors(path, {{"__metadata__", a}});
  EXPECT_NE(s.message().find("\"__metadata__\" is reserved"), std::string::npos) << s;
  s = WriteSafetensors(path, {{"u", Tensor()}});
  EXPECT_NE(s.message().find("tensor \"u\" is undefined"), std::string::npos) << s;
  s = WriteSafetensors(path, {{"bad\xFF", a}});
  EXPECT_NE(s.message().find("is not valid UTF-8"), std::string::npos) << s;
  s = WriteSafetensors(path, {{"a", a}}, {{"k", "\xC0\xAF"}});
  EXPECT_NE(s.message().find("metadata entry \"k\" is not valid UTF-8"), std::string::npos) << s;

  // An I/O failure (here: the temporary name is taken by a directory).
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(temp.c_str(), 0700), 0);
  s = WriteSafetensors(path, {{"b", Sample({4}, DType::kF64, 1)}});
  ::rmdir(temp.c_str());
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot write " + path), std::string::npos) << s;
  EXPECT_EQ(*ReadFileToString(path), before);

  s = WriteSafetensors(TempPath("no/such/dir/x.safetensors"), {{"a", a}});
  EXPECT_NE(s.message().find("check that the directory exists"), std::string::npos) << s;
}

}  // namespace
}  // namespace moe
