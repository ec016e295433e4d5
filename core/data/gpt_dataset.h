// Training samples for a causal language model from an indexed dataset.
//
// The documents' tokens are read as one stream, back to back (end-of-document
// tokens are whatever preprocessing put there). Sample p of an epoch is the
// window [p * seq_length, p * seq_length + seq_length + 1) of the stream:
// inputs are its first seq_length tokens, labels its last seq_length, and
// consecutive windows overlap by one token, as in Megatron's GPTDataset. There
// are num_samples = (total_tokens - 1) / seq_length windows per epoch.
//
// The order: global sample index g falls in epoch e = g / num_samples and
// reads window perm_e[g % num_samples], where perm_e is a Fisher-Yates
// shuffle of [0, num_samples) driven by Philox(seed, kStream + e). The window
// a sample reads therefore depends only on (seed, g): every rank, whatever
// the parallel layout, agrees on the data of each global sample, and each
// epoch visits every window exactly once.
//
// Unlike Megatron, windows are not shuffled by document first and no index
// files are cached on disk: the permutation is recomputed (8 bytes per window,
// milliseconds per million windows) when an epoch is first touched.
#ifndef MOE_CORE_DATA_GPT_DATASET_H_
#define MOE_CORE_DATA_GPT_DATASET_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/indexed_dataset.h"

namespace moe {

class GptDataset {
 public:
  // Philox stream of epoch e's permutation is kPermutationStream + e, apart
  // from the streams that parameter initialization uses.
  static constexpr uint64_t kPermutationStream = uint64_t{0x47505444} << 32;  // "GPTD"

  // Fails if the dataset has fewer than seq_length + 1 tokens.
  static absl::StatusOr<GptDataset> Create(std::shared_ptr<const IndexedDataset> dataset,
                                           int64_t seq_length, uint64_t seed);

  int64_t seq_length() const { return seq_length_; }
  // Tokens per sample: seq_length + 1.
  int64_t sample_length() const { return seq_length_ + 1; }
  // Windows per epoch.
  int64_t num_samples() const { return num_samples_; }
  int64_t total_tokens() const { return dataset_->total_tokens(); }
  uint64_t seed() const { return seed_; }
  const IndexedDataset& dataset() const { return *dataset_; }

  // The window (0 <= p < num_samples) that global sample `global_index` reads.
  int64_t SamplePosition(int64_t global_index) const;
  // Writes the sample_length() tokens of global sample `global_index` (>= 0).
  // Thread-safe.
  absl::Status GetSample(int64_t global_index, int32_t* out) const;
  // Writes the tokens of window `position` (no shuffling).
  absl::Status ReadWindow(int64_t position, int32_t* out) const;

 private:
  // Permutations of the epochs last used, shared with readers still using them.
  struct Cache {
    std::mutex mutex;
    int64_t epochs[2] = {-1, -1};
    std::shared_ptr<const std::vector<int64_t>> permutations[2];
    int next = 0;  // slot to replace
  };

  GptDataset() = default;
  std::shared_ptr<const std::vector<int64_t>> Permutation(int64_t epoch) const;

  std::shared_ptr<const IndexedDataset> dataset_;
  int64_t seq_length_ = 0;
  int64_t num_samples_ = 0;
  uint64_t seed_ = 0;
  // starts_[s] = stream offset of sequence s's first token; starts_[S] = total.
  std::vector<int64_t> starts_;
  std::unique_ptr<Cache> cache_;
};

// Fisher-Yates shuffle of [0, n) drawn from Philox(seed, stream): step i
// (from n - 1 down to 1) swaps i with u mod (i + 1), u the 64-bit number made
// of words 0 and 1 of Block(i) (modulo bias below n / 2^64).
std::vector<int64_t> PhiloxPermutation(int64_t n, uint64_t seed, uint64_t stream);

}  // namespace moe

#endif  // MOE_CORE_DATA_GPT_DATASET_H_
