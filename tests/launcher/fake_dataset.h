// Small indexed datasets written on the fly for the launcher tests.
#ifndef MOE_TESTS_LAUNCHER_FAKE_DATASET_H_
#define MOE_TESTS_LAUNCHER_FAKE_DATASET_H_

#include <cstdint>
#include <string>

namespace moe::testing {

// Writes `prefix`.bin/.idx holding `documents` documents of `tokens_per_document`
// ids each, uniform in [0, vocab) from Philox(seed), every document ending with
// the id vocab - 1 (an end-of-document marker, as the byte tokenizer's 256).
// Dies on a write error.
void WriteFakeDataset(const std::string& prefix, int64_t documents, int64_t tokens_per_document,
                      int64_t vocab, uint64_t seed);

// A fresh empty directory under the test's temporary directory, unique to
// this process.
std::string MakeTestDir(const std::string& name);

}  // namespace moe::testing

#endif  // MOE_TESTS_LAUNCHER_FAKE_DATASET_H_
