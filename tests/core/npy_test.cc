#include "core/io/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "core/io/file_util.h"

namespace moe {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/npy_test_" + std::to_string(::getpid()) + "_" + name + ".npy";
}

// A .npy file with the given header dict text (padded as numpy pads it) and data.
std::string WriteNpyRaw(const std::string& name, const std::string& dict, const std::string& data,
                        int major = 1) {
  const size_t length_bytes = major == 1 ? 2 : 4;
  std::string header = dict;
  while ((6 + 2 + length_bytes + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string bytes("\x93NUMPY", 6);
  bytes.push_back(static_cast<char>(major));
  bytes.push_back(0);
  for (size_t i = 0; i < length_bytes; ++i) {
    bytes.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  }
  bytes += header + data;
  const std::string path = TempPath(name);
  EXPECT_TRUE(WriteFileAtomically(path, bytes).ok());
  return path;
}

template <typename T>
std::string Bytes(std::initializer_list<T> values) {
  std::string out;
  for (T v : values) out.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return out;
}

void ExpectReadError(const std::string& path, std::initializer_list<std::string_view> expected) {
  absl::StatusOr<Tensor> t = ReadNpy(path);
  ASSERT_FALSE(t.ok()) << path << " read without error";
  const std::string message(t.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  for (std::string_view piece : expected) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "error is: " << message << "\n  lacks: " << piece;
  }
}

TEST(NpyTest, RoundTripsEveryDTypeScalarAndZeroSize) {
  struct Case {
    Shape shape;
    DType dtype;
  };
  const Case cases[] = {{{2, 3}, DType::kF32}, {{4}, DType::kF64}, {{2, 1, 3}, DType::kI32},
                        {{5}, DType::kI64},    {{}, DType::kF32},  {{0, 3}, DType::kI64},
                        {{3, 0}, DType::kF32}};
  int index = 0;
  for (const Case& c : cases) {
    Tensor t = Tensor::Empty(c.shape, c.dtype);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (c.dtype == DType::kI64) {
        t.data<int64_t>()[i] = (int64_t{1} << 60) - i;
      } else if (c.dtype == DType::kI32) {
        t.data<int32_t>()[i] = -7 * static_cast<int32_t>(i) + 123456;
      } else {
        t.SetFromDouble(i, 0.1 * static_cast<double>(i) - 1.0);
      }
    }
    const std::string path = TempPath("round_" + std::to_string(index++));
    ASSERT_TRUE(WriteNpy(path, t).ok());
    absl::StatusOr<Tensor> back = ReadNpy(path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->dtype(), t.dtype()) << t.Describe();
    EXPECT_EQ(back->shape(), t.shape()) << t.Describe();
    if (t.nbytes() > 0) {  // empty tensors have no storage
      EXPECT_EQ(std::memcmp(back->raw_data(), t.raw_data(), t.nbytes()), 0) << t.Describe();
    }
  }
}

TEST(NpyTest, WritesTheHeaderNumpyWrites) {
  const std::string path = TempPath("header");
  ASSERT_TRUE(WriteNpy(path, Tensor::Zeros({2, 3}, DType::kF32)).ok());
  const std::string bytes = *ReadFileToString(path);
  // numpy: sorted keys, room for the first dimension to grow to 21 digits,
  // data aligned to 64 bytes.
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  ASSERT_EQ(bytes.size(), 128u + 24u);
  EXPECT_EQ(bytes.substr(0, 10), std::string("\x93NUMPY\x01\x00\x76\x00", 10));
  EXPECT_EQ(bytes.substr(10, 118), dict + std::string(118 - 1 - dict.size(), ' ') + "\n");

  // A scalar has no dimension to grow, so no spare room.
  const std::string scalar = "{'descr': '<i8', 'fortran_order': False, 'shape': (), }";
  ASSERT_TRUE(WriteNpy(path, Tensor::Zeros({}, DType::kI64)).ok());
  EXPECT_EQ(ReadFileToString(path)->substr(10, scalar.size() + 1), scalar + " ");
  const std::string vector = "{'descr': '<i4', 'fortran_order': False, 'shape': (7,), }";
  ASSERT_TRUE(WriteNpy(path, Tensor::Zeros({7}, DType::kI32)).ok());
  EXPECT_EQ(ReadFileToString(path)->substr(10, vector.size() + 1), vector + " ");
}

TEST(NpyTest, RefusesBFloat16) {
  const absl::Status s = WriteNpy(TempPath("bf16"), Tensor::Zeros({2}, DType::kBF16));
  EXPECT_NE(s.message().find("NumPy has no bfloat16 type"), std::string::npos) << s;
  EXPECT_NE(s.message().find("Cast it to kF32"), std::string::npos) << s;
}

TEST(NpyTest, WidensSmallIntegersAndSwapsBigEndian) {
  struct Case {
    std::string descr;
    std::string data;
    DType dtype;
    std::vector<int64_t> expected;
  };
  const Case cases[] = {
      {"|u1", Bytes<uint8_t>({0, 200, 255}), DType::kI32, {0, 200, 255}},
      {"|i1", Bytes<int8_t>({-128, 5, 127}), DType::kI32, {-128, 5, 127}},
      {"<u2", Bytes<uint16_t>({0, 50000, 65535}), DType::kI32, {0, 50000, 65535}},
      {"<i2", Bytes<int16_t>({-32768, 1, 32767}), DType::kI32, {-32768, 1, 32767}},
      {"<u4", Bytes<uint32_t>({0, 4000000000u, 7}), DType::kI64, {0, 4000000000, 7}},
      {"<u8", Bytes<uint64_t>({0, 1ull << 62, 9}), DType::kI64, {0, int64_t{1} << 62, 9}},
      {">i8",
       std::string("\xff\xff\xff\xff\xff\xff\xff\xfe\0\0\0\0\0\0\x01\x00\0\0\0\0\0\0\0\x03", 24),
       DType::kI64,
       {-2, 256, 3}},
  };
  for (const Case& c : cases) {
    const std::string path = WriteNpyRaw(
        "widen", "{'descr': '" + c.descr + "', 'fortran_order': False, 'shape': (3,), }", c.data);
    absl::StatusOr<Tensor> t = ReadNpy(path);
    ASSERT_TRUE(t.ok()) << c.descr << ": " << t.status();
    ASSERT_EQ(t->dtype(), c.dtype) << c.descr;
    ASSERT_EQ(t->shape(), Shape{3});
    for (int i = 0; i < 3; ++i) {
      const int64_t v = c.dtype == DType::kI32 ? t->data<int32_t>()[i] : t->data<int64_t>()[i];
      EXPECT_EQ(v, c.expected[i]) << c.descr << " element " << i;
    }
  }
  const std::string be =
      WriteNpyRaw("big_endian_f4", "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
                  std::string("\x3f\xc0\x00\x00", 4));  // 1.5
  absl::StatusOr<Tensor> f = ReadNpy(be);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->data<float>()[0], 1.5f);

  ExpectReadError(WriteNpyRaw("u8_big", "{'descr': '<u8', 'fortran_order': False, 'shape': (2,), }",
                              Bytes<uint64_t>({1, ~uint64_t{0}})),
                  {"element 1 is 18446744073709551615, too large for int64"});
}

TEST(NpyTest, AcceptsOtherHeaderSpellings) {
  // Format 2.0, double quotes, keys in another order, Python 2 long ints.
  const std::string path =
      WriteNpyRaw("v2", "{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"<f8\"}",
                  Bytes<double>({0.25, -4.0}), 2);
  absl::StatusOr<Tensor> t = ReadNpy(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->shape(), (Shape{2, 1}));
  EXPECT_EQ(t->data<double>()[1], -4.0);
}

TEST(NpyTest, RejectsBadFiles) {
  const std::string f4 = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string data = Bytes<float>({1, 2});
  ExpectReadError(TempPath("missing_file"), {"cannot open", "No such file or directory"});
  {
    const std::string path = TempPath("not_npy");
    ASSERT_TRUE(WriteFileAtomically(path, "PK\x03\x04 this is a zip archive").ok());
    ExpectReadError(path, {"does not start with the .npy magic"});
    ASSERT_TRUE(WriteFileAtomically(path, "\x93NUM").ok());
    ExpectReadError(path, {"it is only 4 bytes long"});
  }
  {
    std::string bytes = *ReadFileToString(WriteNpyRaw("v9", f4, data));
    bytes[6] = 9;
    const std::string path = TempPath("v9");
    ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
    ExpectReadError(path, {"format version 9.0 is unknown"});
    bytes[6] = 1;
    ASSERT_TRUE(WriteFileAtomically(path, bytes.substr(0, 40)).ok());
    ExpectReadError(path, {"truncated: the header should be 118 bytes, but the file is only 40"});
  }
  ExpectReadError(WriteNpyRaw("truncated_data", f4, data.substr(0, 6)),
                  {"truncated: shape [2] of '<f4' needs 8 bytes of data, but only 6"});
  ExpectReadError(WriteNpyRaw("trailing", f4, data + "xyz"),
                  {"has 3 unexpected bytes after the 8 bytes of data"});
  ExpectReadError(
      WriteNpyRaw("fortran", "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }", data),
      {"Fortran (column-major) order", "np.ascontiguousarray"});
  for (const char* descr : {"<f2", "|b1", "<U3", "<c8", "|O", "<i16", "<x4"}) {
    ExpectReadError(
        WriteNpyRaw(
            "descr",
            std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }",
            data),
        {"holds elements of numpy dtype '", descr, "', which this framework does not load"});
  }
  ExpectReadError(WriteNpyRaw("no_shape", "{'descr': '<f4', 'fortran_order': False, }", data),
                  {"must give descr, fortran_order and shape"});
  ExpectReadError(
      WriteNpyRaw("extra", "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", data),
      {"unexpected key 'x'"});
  ExpectReadError(
      WriteNpyRaw("neg", "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", data),
      {"shape must be a tuple of non-negative integers"});
  ExpectReadError(
      WriteNpyRaw("list", "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", data),
      {"shape must be a tuple of integers like (2, 3)"});
  ExpectReadError(
      WriteNpyRaw("order", "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", data),
      {"fortran_order must be True or False"});
  ExpectReadError(WriteNpyRaw("not_dict", "['<f4', False, (2,)]", data),
                  {"the header does not start with '{'"});
  ExpectReadError(
      WriteNpyRaw("structured",
                  "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data),
      {"expected a quoted string"});
  ExpectReadError(WriteNpyRaw("huge",
                              "{'descr': '<f8', 'fortran_order': False, "
                              "'shape': (4294967296, 4294967296), }",
                              data),
                  {"shape [4294967296, 4294967296] is too large"});
}

}  // namespace
}  // namespace moe
