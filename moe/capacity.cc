#include "moe/capacity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "moe/permutation.h"

namespace moe {

std::string_view DropPolicyName(DropPolicy policy) {
  return policy == DropPolicy::kProbs ? "probs" : "position";
}

absl::StatusOr<DropPolicy> ParseDropPolicy(std::string_view name) {
  if (name == "probs") return DropPolicy::kProbs;
  if (name == "position") return DropPolicy::kPosition;
  return absl::InvalidArgumentError(
      absl::StrCat("--moe_token_drop_policy=", std::string(name), ": expected probs or position"));
}

int64_t ExpertCapacity(int64_t num_tokens, int64_t top_k, int64_t num_experts,
                       double capacity_factor) {
  MOE_CHECK(num_experts >= 1 && capacity_factor > 0)
      << "ExpertCapacity: needs num_experts >= 1 and capacity_factor > 0, got " << num_experts
      << " and " << capacity_factor;
  const double exact =
      static_cast<double>(num_tokens * top_k) / static_cast<double>(num_experts) * capacity_factor;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(exact)));
}

namespace {

template <typename T>
void DropByWeight(int32_t* ids, const T* weights, int64_t num_pairs, int64_t num_experts,
                  int64_t capacity, std::vector<double>* dropped) {
  std::vector<std::vector<int64_t>> pairs_of(static_cast<size_t>(num_experts));
  for (int64_t p = 0; p < num_pairs; ++p) {
    if (ids[p] != kUnrouted) pairs_of[ids[p]].push_back(p);
  }
  std::vector<int64_t> key;  // filled when an expert is first over capacity
  for (int64_t e = 0; e < num_experts; ++e) {
    std::vector<int64_t>& pairs = pairs_of[e];
    if (static_cast<int64_t>(pairs.size()) <= capacity) continue;
    // Largest weight first, compared on a grid of 2^-20; stable, so weights
    // in one cell keep token order. Tokens with the same hidden state (a
    // repeated token at the start of a sequence: attention averages equal
    // values) tie exactly in exact math, but fp rounding that depends on the
    // layout (batch split, reduction order) would break the tie at random and
    // make the drop, and so the loss, depend on the layout.
    if (key.empty()) {
      key.resize(static_cast<size_t>(num_pairs));
      for (int64_t p = 0; p < num_pairs; ++p) {
        key[p] = static_cast<int64_t>(std::floor(double(weights[p]) * 0x1p20));
      }
    }
    std::stable_sort(pairs.begin(), pairs.end(),
                     [&](int64_t a, int64_t b) { return key[a] > key[b]; });
    for (size_t i = static_cast<size_t>(capacity); i < pairs.size(); ++i) ids[pairs[i]] = kUnrouted;
    (*dropped)[e] += static_cast<double>(pairs.size()) - static_cast<double>(capacity);
  }
}

}  // namespace

Tensor DropOverCapacity(const Tensor& ids_TK, const Tensor& weights_TK, int64_t num_experts,
                        int64_t capacity, DropPolicy policy, std::vector<double>* dropped_E) {
  MOE_CHECK(ids_TK.dtype() == DType::kI32 && ids_TK.ndim() == 2 && ids_TK.device() == Device::kCpu)
      << "DropOverCapacity: ids must be i32[tokens, k] on cpu, got " << ids_TK.Describe();
  MOE_CHECK(capacity >= 0) << "DropOverCapacity: capacity must be >= 0, got " << capacity;
  if (dropped_E->empty()) dropped_E->assign(static_cast<size_t>(num_experts), 0.0);
  MOE_CHECK(static_cast<int64_t>(dropped_E->size()) == num_experts)
      << "DropOverCapacity: dropped_E has " << dropped_E->size() << " entries, expected "
      << num_experts;
  Tensor ids = ids_TK.Clone();
  int32_t* id = ids.data<int32_t>();
  const int64_t num_pairs = ids.numel();
  for (int64_t p = 0; p < num_pairs; ++p) {
    MOE_CHECK(id[p] == kUnrouted || (id[p] >= 0 && id[p] < num_experts))
        << "DropOverCapacity: expert id " << id[p] << " outside [0, " << num_experts << ")";
  }
  if (policy == DropPolicy::kPosition) {
    std::vector<int64_t> kept(static_cast<size_t>(num_experts), 0);
    for (int64_t p = 0; p < num_pairs; ++p) {
      if (id[p] == kUnrouted) continue;
      if (kept[id[p]] < capacity) {
        ++kept[id[p]];
      } else {
        (*dropped_E)[id[p]] += 1;
        id[p] = kUnrouted;
      }
    }
    return ids;
  }
  MOE_CHECK(weights_TK.numel() == num_pairs && weights_TK.device() == Device::kCpu &&
            (weights_TK.dtype() == DType::kF32 || weights_TK.dtype() == DType::kF64))
      << "DropOverCapacity: weights must be f32/f64 like ids " << ids_TK.Describe() << ", got "
      << weights_TK.Describe();
  if (weights_TK.dtype() == DType::kF64) {
    DropByWeight(id, weights_TK.data<double>(), num_pairs, num_experts, capacity, dropped_E);
  } else {
    DropByWeight(id, weights_TK.data<float>(), num_pairs, num_experts, capacity, dropped_E);
  }
  return ids;
}

}  // namespace moe
