#include "core/data/gpt_dataset.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

namespace moe {
namespace {

std::string TempPrefix(const std::string& name) {
  return ::testing::TempDir() + "/gpt_dataset_test_" + std::to_string(::getpid()) + "_" + name;
}

// Writes documents of the given lengths (0 = an empty document) whose tokens
// are the stream positions modulo 60000, so a window's expected tokens are
// easy to state. Returns the token stream.
std::vector<int32_t> WriteStream(const std::string& prefix, const std::vector<int>& lengths) {
  auto writer = IndexedDatasetWriter::Create(prefix, TokenDtype::kUInt16);
  EXPECT_TRUE(writer.ok()) << writer.status();
  std::vector<int32_t> stream;
  for (const int length : lengths) {
    std::vector<int32_t> doc(static_cast<size_t>(length));
    for (int32_t& t : doc) {
      t = static_cast<int32_t>(stream.size() % 60000);
      stream.push_back(t);
    }
    EXPECT_TRUE((*writer)->AddDocument(doc).ok());
  }
  EXPECT_TRUE((*writer)->Finalize().ok());
  return stream;
}

std::shared_ptr<const IndexedDataset> OpenShared(const std::string& prefix) {
  absl::StatusOr<IndexedDataset> ds = IndexedDataset::Open(prefix);
  EXPECT_TRUE(ds.ok()) << ds.status();
  return std::make_shared<const IndexedDataset>(*std::move(ds));
}

class GptDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = TempPrefix("stream");
    // 1 + 7 + 30 + 0 + 3 + 50 + 12 = 103 tokens, documents shorter and longer
    // than a window, and an empty one.
    stream_ = WriteStream(prefix_, {1, 7, 30, 0, 3, 50, 12});
    dataset_ = OpenShared(prefix_);
  }

  std::vector<int32_t> Sample(const GptDataset& gpt, int64_t index) {
    std::vector<int32_t> out(static_cast<size_t>(gpt.sample_length()), -1);
    absl::Status status = gpt.GetSample(index, out.data());
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  std::string prefix_;
  std::vector<int32_t> stream_;
  std::shared_ptr<const IndexedDataset> dataset_;
};

TEST_F(GptDatasetTest, WindowsAreOverlappingSlicesOfTheStream) {
  for (const int64_t seq_length : {1, 5, 8, 51, 102}) {
    SCOPED_TRACE(seq_length);
    auto gpt = GptDataset::Create(dataset_, seq_length, 1234);
    ASSERT_TRUE(gpt.ok()) << gpt.status();
    EXPECT_EQ(gpt->num_samples(), (103 - 1) / seq_length);
    for (int64_t p = 0; p < gpt->num_samples(); ++p) {
      std::vector<int32_t> window(static_cast<size_t>(seq_length + 1));
      ASSERT_TRUE(gpt->ReadWindow(p, window.data()).ok());
      const auto begin = stream_.begin() + p * seq_length;
      EXPECT_EQ(window, std::vector<int32_t>(begin, begin + seq_length + 1)) << "window " << p;
    }
  }
}

TEST_F(GptDatasetTest, EveryEpochIsAPermutation) {
  auto gpt = GptDataset::Create(dataset_, 4, 7);
  ASSERT_TRUE(gpt.ok());
  const int64_t n = gpt->num_samples();
  ASSERT_EQ(n, 25);
  std::vector<std::vector<int64_t>> orders;
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<int64_t> order;
    for (int64_t i = 0; i < n; ++i) order.push_back(gpt->SamplePosition(epoch * n + i));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all) << "epoch " << epoch << " does not visit every window once";
    std::vector<int64_t> identity = all;
    EXPECT_NE(order, identity) << "epoch " << epoch << " is not shuffled";
    for (const auto& previous : orders) EXPECT_NE(order, previous);
    orders.push_back(order);
  }
  // The sample is the window its position names.
  for (int64_t g : {0, 3, 24, 25, 77}) {
    std::vector<int32_t> window(5);
    ASSERT_TRUE(gpt->ReadWindow(gpt->SamplePosition(g), window.data()).ok());
    EXPECT_EQ(Sample(*gpt, g), window);
  }
}

TEST_F(GptDatasetTest, OrderDependsOnlyOnSeedAndIndex) {
  auto a = GptDataset::Create(dataset_, 4, 99);
  auto b = GptDataset::Create(OpenShared(prefix_), 4, 99);
  auto other_seed = GptDataset::Create(dataset_, 4, 100);
  ASSERT_TRUE(a.ok() && b.ok() && other_seed.ok());
  // `a` reads in order; `b` reads as rank 1 then rank 0 of a 2-way data
  // parallel split would, crossing epochs, in reverse: same samples.
  std::vector<std::vector<int32_t>> in_order;
  for (int64_t g = 0; g < 80; ++g) in_order.push_back(Sample(*a, g));
  for (int rank : {1, 0}) {
    for (int64_t g = 79 - (1 - rank); g >= 0; g -= 2) {
      EXPECT_EQ(Sample(*b, g), in_order[static_cast<size_t>(g)]) << "sample " << g;
    }
  }
  int differing = 0;
  for (int64_t g = 0; g < 25; ++g)
    differing += other_seed->SamplePosition(g) != a->SamplePosition(g);
  EXPECT_GT(differing, 10);
}

TEST_F(GptDatasetTest, ConcurrentReadersAgree) {
  auto gpt = GptDataset::Create(dataset_, 3, 5);
  ASSERT_TRUE(gpt.ok());
  std::vector<std::vector<int32_t>> expected;
  for (int64_t g = 0; g < 200; ++g) expected.push_back(Sample(*gpt, g));
  auto fresh = GptDataset::Create(dataset_, 3, 5);
  ASSERT_TRUE(fresh.ok());
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t g = t; g < 200; g += 4) {
        std::vector<int32_t> out(4);
        if (!fresh->GetSample(g, out.data()).ok() || out != expected[static_cast<size_t>(g)]) {
          ++mismatches[static_cast<size_t>(t)];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST_F(GptDatasetTest, Errors) {
  auto too_long = GptDataset::Create(dataset_, 103, 1);
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.status().message().find("has 103 tokens"), std::string::npos)
      << too_long.status();
  EXPECT_NE(too_long.status().message().find("seq_length + 1 = 104"), std::string::npos);
  EXPECT_FALSE(GptDataset::Create(dataset_, 0, 1).ok());
  auto gpt = GptDataset::Create(dataset_, 8, 1);
  ASSERT_TRUE(gpt.ok());
  int32_t out[9];
  EXPECT_FALSE(gpt->GetSample(-1, out).ok());
  EXPECT_FALSE(gpt->ReadWindow(gpt->num_samples(), out).ok());
}

TEST(PhiloxPermutationTest, SmallCases) {
  EXPECT_TRUE(PhiloxPermutation(0, 1, 2).empty());
  EXPECT_EQ(PhiloxPermutation(1, 1, 2), std::vector<int64_t>{0});
  EXPECT_EQ(PhiloxPermutation(1000, 3, 4), PhiloxPermutation(1000, 3, 4));
  EXPECT_NE(PhiloxPermutation(1000, 3, 4), PhiloxPermutation(1000, 3, 5));
  // Each of the 6 orders of 3 elements shows up over many streams.
  std::vector<std::vector<int64_t>> seen;
  for (uint64_t stream = 0; stream < 200; ++stream) {
    std::vector<int64_t> p = PhiloxPermutation(3, 11, stream);
    if (std::find(seen.begin(), seen.end(), p) == seen.end()) seen.push_back(p);
  }
  EXPECT_EQ(seen.size(), 6u);
}

}  // namespace
}  // namespace moe
