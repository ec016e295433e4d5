#include "tests/launcher/fake_dataset.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/data/indexed_dataset.h"
#include "core/philox.h"

namespace moe::testing {

void WriteFakeDataset(const std::string& prefix, int64_t documents, int64_t tokens_per_document,
                      int64_t vocab, uint64_t seed) {
  auto writer = IndexedDatasetWriter::Create(prefix, TokenDtypeForVocab(vocab));
  MOE_CHECK(writer.ok()) << writer.status().message();
  const Philox philox(seed, /*stream=*/0);
  std::vector<int32_t> tokens(static_cast<size_t>(tokens_per_document));
  for (int64_t d = 0; d < documents; ++d) {
    for (int64_t t = 0; t < tokens_per_document; ++t) {
      const uint32_t word = philox.Block(static_cast<uint64_t>(d * tokens_per_document + t))[0];
      tokens[t] = static_cast<int32_t>(word % static_cast<uint32_t>(vocab - 1));
    }
    tokens.back() = static_cast<int32_t>(vocab - 1);
    const absl::Status added = (*writer)->AddDocument(tokens);
    MOE_CHECK(added.ok()) << added.message();
  }
  const absl::Status done = (*writer)->Finalize();
  MOE_CHECK(done.ok()) << done.message();
}

std::string MakeTestDir(const std::string& name) {
  // The pid keeps test processes that CTest runs in parallel apart.
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / (name + "." + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace moe::testing
