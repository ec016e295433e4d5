#include "core/data/indexed_dataset.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/io/file_util.h"

namespace moe {
namespace {

std::string TempPrefix(const std::string& name) {
  return ::testing::TempDir() + "/indexed_dataset_test_" + std::to_string(::getpid()) + "_" + name;
}

bool FileExists(const std::string& path) {
  struct stat info;
  return ::stat(path.c_str(), &info) == 0;
}

std::string ReadAll(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.ok() ? *bytes : "";
}

void WritePlain(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Documents as lists of sequences; token values depend on (doc, seq, i) and
// stay within [low, low + span).
using Document = std::vector<std::vector<int32_t>>;

std::vector<Document> SampleDocuments(int32_t low, int32_t span) {
  std::vector<Document> docs;
  int32_t next = 0;
  const auto token = [&] { return low + (next++ * 7919) % span; };
  for (int d = 0; d < 6; ++d) {
    Document doc;
    if (d == 2) {  // an empty document: no sequences
      docs.push_back(doc);
      continue;
    }
    const int sequences = d == 4 ? 3 : 1;
    for (int s = 0; s < sequences; ++s) {
      std::vector<int32_t> seq(static_cast<size_t>(5 + 13 * d + s));
      for (int32_t& t : seq) t = token();
      doc.push_back(seq);
    }
    docs.push_back(doc);
  }
  return docs;
}

void WriteDataset(const std::string& prefix, TokenDtype dtype, const std::vector<Document>& docs) {
  absl::StatusOr<std::unique_ptr<IndexedDatasetWriter>> writer =
      IndexedDatasetWriter::Create(prefix, dtype);
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (const Document& doc : docs) {
    std::vector<int32_t> tokens;
    std::vector<int64_t> lengths;
    for (const auto& seq : doc) {
      tokens.insert(tokens.end(), seq.begin(), seq.end());
      lengths.push_back(static_cast<int64_t>(seq.size()));
    }
    ASSERT_TRUE((*writer)->AddDocument(tokens, lengths).ok());
  }
  ASSERT_TRUE((*writer)->Finalize().ok());
}

struct DtypeCase {
  TokenDtype dtype;
  int32_t low;
  int32_t span;
};

TEST(IndexedDatasetTest, RoundTripsEveryIntegerDtype) {
  const DtypeCase cases[] = {
      {TokenDtype::kUInt8, 0, 256},
      {TokenDtype::kInt8, -128, 256},
      {TokenDtype::kInt16, -32768, 65536},
      {TokenDtype::kUInt16, 0, 65536},
      {TokenDtype::kInt32, -1000000, 2000000},
      {TokenDtype::kInt64, 0, 1 << 30},
  };
  for (const DtypeCase& c : cases) {
    SCOPED_TRACE(TokenDtypeName(static_cast<uint8_t>(c.dtype)));
    const std::string prefix = TempPrefix(TokenDtypeName(static_cast<uint8_t>(c.dtype)));
    const std::vector<Document> docs = SampleDocuments(c.low, c.span);
    WriteDataset(prefix, c.dtype, docs);
    absl::StatusOr<IndexedDataset> ds = IndexedDataset::Open(prefix);
    ASSERT_TRUE(ds.ok()) << ds.status();
    EXPECT_EQ(ds->dtype(), c.dtype);
    EXPECT_EQ(ds->num_documents(), 6);
    std::vector<int64_t> expected_doc_indices = {0};
    int64_t seq = 0;
    int64_t pointer = 0;
    int64_t total = 0;
    for (const Document& doc : docs) {
      for (const auto& expected : doc) {
        ASSERT_EQ(ds->sequence_length(seq), static_cast<int64_t>(expected.size()));
        EXPECT_EQ(ds->sequence_pointers()[static_cast<size_t>(seq)], pointer);
        std::vector<int32_t> tokens(expected.size());
        ASSERT_TRUE(ds->ReadTokens(seq, 0, ds->sequence_length(seq), tokens.data()).ok());
        EXPECT_EQ(tokens, expected);
        // A slice from the middle.
        std::vector<int32_t> slice(3);
        ASSERT_TRUE(ds->ReadTokens(seq, 2, 3, slice.data()).ok());
        EXPECT_EQ(slice, std::vector<int32_t>(expected.begin() + 2, expected.begin() + 5));
        pointer +=
            static_cast<int64_t>(expected.size()) * TokenDtypeSize(static_cast<uint8_t>(c.dtype));
        total += static_cast<int64_t>(expected.size());
        ++seq;
      }
      expected_doc_indices.push_back(seq);
    }
    EXPECT_EQ(ds->num_sequences(), seq);
    EXPECT_EQ(ds->total_tokens(), total);
    EXPECT_EQ(ds->document_indices(), expected_doc_indices);
    EXPECT_EQ(ReadAll(prefix + ".bin").size(), static_cast<size_t>(pointer));
  }
}

TEST(IndexedDatasetTest, IndexLayoutIsMegatrons) {
  const std::string prefix = TempPrefix("layout");
  WriteDataset(prefix, TokenDtype::kUInt16, {{{1, 2, 3}}, {{4, 5}}});
  const std::string idx = ReadAll(prefix + ".idx");
  std::string expected("MMIDIDX\0\0", 9);
  const auto append = [&](const auto& value) {
    expected.append(reinterpret_cast<const char*>(&value), sizeof(value));
  };
  append(uint64_t{1});
  append(uint8_t{8});
  append(uint64_t{2});
  append(uint64_t{3});
  append(int32_t{3});
  append(int32_t{2});
  append(int64_t{0});
  append(int64_t{6});
  append(int64_t{0});
  append(int64_t{1});
  append(int64_t{2});
  EXPECT_EQ(idx, expected);
  const std::string bin = ReadAll(prefix + ".bin");
  const uint16_t tokens[] = {1, 2, 3, 4, 5};
  EXPECT_EQ(bin, std::string(reinterpret_cast<const char*>(tokens), sizeof(tokens)));
}

TEST(IndexedDatasetTest, DtypeForVocabFollowsMegatron) {
  EXPECT_EQ(TokenDtypeForVocab(257), TokenDtype::kUInt16);
  EXPECT_EQ(TokenDtypeForVocab(65499), TokenDtype::kUInt16);
  EXPECT_EQ(TokenDtypeForVocab(65500), TokenDtype::kInt32);
  EXPECT_EQ(TokenDtypeForVocab(128256), TokenDtype::kInt32);
}

TEST(IndexedDatasetTest, WriterRejectsTokensOutsideTheDtype) {
  const std::string prefix = TempPrefix("range");
  auto writer = IndexedDatasetWriter::Create(prefix, TokenDtype::kUInt16);
  ASSERT_TRUE(writer.ok());
  const std::vector<int32_t> big = {1, 70000};
  absl::Status status = (*writer)->AddDocument(big);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("token 70000 at position 1"), std::string::npos) << status;
  const std::vector<int32_t> negative = {-1};
  EXPECT_FALSE((*writer)->AddDocument(negative).ok());
  EXPECT_EQ((*writer)->num_documents(), 0);

  auto float_writer = IndexedDatasetWriter::Create(prefix, TokenDtype::kFloat32);
  ASSERT_FALSE(float_writer.ok());
  EXPECT_NE(float_writer.status().message().find("float32"), std::string::npos);
}

TEST(IndexedDatasetTest, UnfinishedWriterLeavesNoFiles) {
  const std::string prefix = TempPrefix("abandoned");
  {
    auto writer = IndexedDatasetWriter::Create(prefix, TokenDtype::kInt32);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->AddDocument(std::vector<int32_t>{1, 2, 3}).ok());
  }
  EXPECT_FALSE(FileExists(prefix + ".bin"));
  EXPECT_FALSE(FileExists(prefix + ".idx"));
}

TEST(IndexedDatasetTest, ReadTokensChecksBounds) {
  const std::string prefix = TempPrefix("bounds");
  WriteDataset(prefix, TokenDtype::kUInt16, {{{1, 2, 3}}});
  auto ds = IndexedDataset::Open(prefix);
  ASSERT_TRUE(ds.ok());
  int32_t out[4];
  EXPECT_FALSE(ds->ReadTokens(1, 0, 1, out).ok());
  EXPECT_FALSE(ds->ReadTokens(0, 2, 2, out).ok());
  EXPECT_FALSE(ds->ReadTokens(0, -1, 1, out).ok());
  EXPECT_TRUE(ds->ReadTokens(0, 3, 0, out).ok());
}

// A valid data set whose .idx (or .bin) each test corrupts in one way.
class BadFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = TempPrefix(::testing::UnitTest::GetInstance()->current_test_info()->name());
    // Three documents of lengths 4, 2, 3: S = 3, D = 4.
    WriteDataset(prefix_, TokenDtype::kUInt16, {{{1, 2, 3, 4}}, {{5, 6}}, {{7, 8, 9}}});
    idx_ = ReadAll(prefix_ + ".idx");
    ASSERT_EQ(idx_.size(), 34u + 3 * 12 + 4 * 8);
  }

  template <typename T>
  void Put(size_t offset, T value) {
    std::memcpy(idx_.data() + offset, &value, sizeof(T));
  }

  // Opens with the modified .idx and expects an error containing every `part`.
  void ExpectError(std::initializer_list<std::string> parts) {
    WritePlain(prefix_ + ".idx", idx_);
    absl::StatusOr<IndexedDataset> ds = IndexedDataset::Open(prefix_);
    ASSERT_FALSE(ds.ok()) << "a corrupt file was accepted";
    const std::string message(ds.status().message());
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "message: " << message;
    }
  }

  static constexpr size_t kLengths = 34;
  static constexpr size_t kPointers = 34 + 3 * 4;
  static constexpr size_t kDocIndices = 34 + 3 * 12;
  std::string prefix_;
  std::string idx_;
};

TEST_F(BadFileTest, TruncatedHeader) {
  idx_.resize(20);
  ExpectError({prefix_ + ".idx", "fewer than the 34-byte header"});
}

TEST_F(BadFileTest, TruncatedArrays) {
  idx_.resize(idx_.size() - 5);
  ExpectError({prefix_ + ".idx", "truncated"});
}

TEST_F(BadFileTest, TrailingBytes) {
  idx_ += "xx";
  ExpectError({prefix_ + ".idx", "but the file has"});
}

TEST_F(BadFileTest, WrongMagic) {
  idx_[0] = 'X';
  ExpectError({prefix_ + ".idx", "bad magic"});
}

TEST_F(BadFileTest, WrongVersion) {
  Put<uint64_t>(9, 2);
  ExpectError({prefix_ + ".idx", "version is 2"});
}

TEST_F(BadFileTest, UnknownDtypeCode) {
  Put<uint8_t>(17, 9);
  ExpectError({prefix_ + ".idx", "dtype code is 9"});
}

TEST_F(BadFileTest, FloatDtypeCode) {
  Put<uint8_t>(17, 7);
  ExpectError({prefix_ + ".idx", "float32", "cannot hold tokens"});
}

TEST_F(BadFileTest, SequenceCountTooLarge) {
  Put<uint64_t>(18, uint64_t{1} << 40);
  ExpectError({prefix_ + ".idx", "sequence count"});
}

TEST_F(BadFileTest, NegativeLength) {
  Put<int32_t>(kLengths + 4, -2);
  ExpectError({"lengths[1] = -2"});
}

TEST_F(BadFileTest, PointerInconsistentWithLengths) {
  Put<int64_t>(kPointers + 8, 10);  // pointers[1] should be 4 * 2 = 8
  ExpectError({prefix_ + ".idx", "pointers[1] = 10", "= 8"});
}

TEST_F(BadFileTest, FirstPointerNotZero) {
  Put<int64_t>(kPointers, 2);
  ExpectError({"pointers[0] = 2", "the first pointer must be 0"});
}

TEST_F(BadFileTest, LengthsDisagreeWithDocumentIndices) {
  Put<int64_t>(kDocIndices + 3 * 8, 2);  // document_indices[-1] must be S = 3
  ExpectError({prefix_ + ".idx", "document_indices[-1] = 2", "sequence count (lengths.size) is 3"});
}

TEST_F(BadFileTest, DocumentIndicesNotStartingAtZero) {
  Put<int64_t>(kDocIndices, 1);
  ExpectError({"document_indices[0] = 1"});
}

TEST_F(BadFileTest, DocumentIndicesDecreasing) {
  Put<int64_t>(kDocIndices + 8, 2);
  Put<int64_t>(kDocIndices + 16, 1);
  ExpectError({"document_indices decrease at 2"});
}

TEST_F(BadFileTest, PointersPastTheEndOfBin) {
  const std::string bin = ReadAll(prefix_ + ".bin");
  WritePlain(prefix_ + ".bin", bin.substr(0, bin.size() - 2));
  ExpectError({prefix_ + ".bin has 16 bytes", "points past its end", "ends at byte 18"});
}

TEST_F(BadFileTest, MissingBin) {
  ASSERT_EQ(::unlink((prefix_ + ".bin").c_str()), 0);
  ExpectError({"cannot open " + prefix_ + ".bin"});
}

TEST(IndexedDatasetTest, MissingIndexNamesThePath) {
  const std::string prefix = TempPrefix("missing");
  absl::StatusOr<IndexedDataset> ds = IndexedDataset::Open(prefix);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find(prefix + ".idx"), std::string::npos);
}

}  // namespace
}  // namespace moe
