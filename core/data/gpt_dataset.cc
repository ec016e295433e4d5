#include "core/data/gpt_dataset.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/philox.h"

namespace moe {

std::vector<int64_t> PhiloxPermutation(int64_t n, uint64_t seed, uint64_t stream) {
  MOE_CHECK(n >= 0) << "PhiloxPermutation: n must be >= 0, got " << n;
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  const Philox philox(seed, stream);
  for (int64_t i = n - 1; i > 0; --i) {
    const std::array<uint32_t, 4> block = philox.Block(static_cast<uint64_t>(i));
    const uint64_t u = (static_cast<uint64_t>(block[0]) << 32) | block[1];
    const auto j = static_cast<int64_t>(u % static_cast<uint64_t>(i + 1));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

absl::StatusOr<GptDataset> GptDataset::Create(std::shared_ptr<const IndexedDataset> dataset,
                                              int64_t seq_length, uint64_t seed) {
  if (dataset == nullptr) return absl::InvalidArgumentError("GptDataset: no dataset given");
  if (seq_length < 1) {
    return absl::InvalidArgumentError(absl::StrCat("GptDataset over ", dataset->prefix(),
                                                   ": seq_length must be >= 1, got ", seq_length));
  }
  const int64_t total = dataset->total_tokens();
  if (total < seq_length + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GptDataset over ", dataset->prefix(), ": the dataset has ", total,
                     " tokens, but one sample needs seq_length + 1 = ", seq_length + 1,
                     "; use a larger corpus or a shorter --seq_length"));
  }
  GptDataset result;
  result.seq_length_ = seq_length;
  result.num_samples_ = (total - 1) / seq_length;
  result.seed_ = seed;
  result.starts_.resize(static_cast<size_t>(dataset->num_sequences()) + 1);
  result.starts_[0] = 0;
  for (int64_t s = 0; s < dataset->num_sequences(); ++s) {
    result.starts_[static_cast<size_t>(s) + 1] =
        result.starts_[static_cast<size_t>(s)] + dataset->sequence_length(s);
  }
  result.dataset_ = std::move(dataset);
  result.cache_ = std::make_unique<Cache>();
  return result;
}

std::shared_ptr<const std::vector<int64_t>> GptDataset::Permutation(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mutex);
  for (int slot = 0; slot < 2; ++slot) {
    if (cache_->epochs[slot] == epoch) return cache_->permutations[slot];
  }
  // Computed under the lock: ranks' loader threads asking for the same new
  // epoch then wait for one computation instead of each doing it.
  auto permutation = std::make_shared<const std::vector<int64_t>>(
      PhiloxPermutation(num_samples_, seed_, kPermutationStream + static_cast<uint64_t>(epoch)));
  const int slot = cache_->next;
  cache_->epochs[slot] = epoch;
  cache_->permutations[slot] = permutation;
  cache_->next = 1 - slot;
  return permutation;
}

int64_t GptDataset::SamplePosition(int64_t global_index) const {
  MOE_CHECK(global_index >= 0) << "GptDataset: sample index must be >= 0, got " << global_index;
  const int64_t epoch = global_index / num_samples_;
  return (*Permutation(epoch))[static_cast<size_t>(global_index % num_samples_)];
}

absl::Status GptDataset::GetSample(int64_t global_index, int32_t* out) const {
  if (global_index < 0) {
    return absl::OutOfRangeError(absl::StrCat("GptDataset over ", dataset_->prefix(),
                                              ": sample index ", global_index, " is negative"));
  }
  return ReadWindow(SamplePosition(global_index), out);
}

absl::Status GptDataset::ReadWindow(int64_t position, int32_t* out) const {
  if (position < 0 || position >= num_samples_) {
    return absl::OutOfRangeError(absl::StrCat("GptDataset over ", dataset_->prefix(), ": window ",
                                              position, " out of range [0, ", num_samples_, ")"));
  }
  int64_t start = position * seq_length_;
  int64_t remaining = seq_length_ + 1;
  // The last sequence starting at or before `start` (skipping empty ones,
  // whose start equals the next sequence's).
  auto seq = static_cast<int64_t>(std::upper_bound(starts_.begin(), starts_.end(), start) -
                                  starts_.begin()) -
             1;
  while (remaining > 0) {
    MOE_CHECK(seq < dataset_->num_sequences())
        << "GptDataset: window " << position << " runs past the end of the token stream";
    const int64_t offset = start - starts_[static_cast<size_t>(seq)];
    const int64_t count = std::min(remaining, dataset_->sequence_length(seq) - offset);
    if (count > 0) {
      if (absl::Status s = dataset_->ReadTokens(seq, offset, count, out); !s.ok()) return s;
      out += count;
      remaining -= count;
      start += count;
    }
    ++seq;
  }
  return absl::OkStatus();
}

}  // namespace moe
