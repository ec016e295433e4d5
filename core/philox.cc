#include "core/philox.h"

#include <cmath>
#include <numbers>

namespace moe {
namespace {

// Constants from the Random123 reference.
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

inline void MulHiLo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

}  // namespace

Philox::Philox(uint64_t seed, uint64_t stream)
    : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
      stream_lo_(static_cast<uint32_t>(stream)),
      stream_hi_(static_cast<uint32_t>(stream >> 32)) {}

std::array<uint32_t, 4> Philox::Block(uint64_t counter) const {
  // The 128-bit counter is (element counter, stream).
  std::array<uint32_t, 4> c = {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                               stream_lo_, stream_hi_};
  std::array<uint32_t, 2> k = key_;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    MulHiLo(kMul0, c[0], &hi0, &lo0);
    MulHiLo(kMul1, c[2], &hi1, &lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

float Philox::Uniform(uint64_t counter) const {
  return static_cast<float>(Block(counter)[0] >> 8) * (1.0f / 16777216.0f);
}

double Philox::Normal(uint64_t counter) const {
  const std::array<uint32_t, 4> b = Block(counter);
  // u1 in (0, 1] so that log(u1) is finite; u2 in [0, 1).
  const double u1 = (static_cast<double>(b[0]) + 1.0) / 4294967296.0;
  const double u2 = static_cast<double>(b[1]) / 4294967296.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

ShardSlice ShardSlice::Whole(const Shape& shape) {
  return ShardSlice{shape, std::vector<int64_t>(shape.size(), 0)};
}

namespace {

// Calls fill(local_index, global_index) for every element of the shard.
template <typename Fill>
void ForEachGlobalIndex(const Tensor& shard, const ShardSlice& slice, Fill fill) {
  const Shape& local = shard.shape();
  const Shape& global = slice.global_shape;
  MOE_CHECK(local.size() == global.size() && slice.offsets.size() == global.size())
      << "shard " << shard.Describe() << " does not match global shape " << ShapeToString(global);
  for (size_t d = 0; d < local.size(); ++d) {
    MOE_CHECK(slice.offsets[d] >= 0 && slice.offsets[d] + local[d] <= global[d])
        << "shard " << shard.Describe() << " at offset " << slice.offsets[d] << " in dimension "
        << d << " exceeds global shape " << ShapeToString(global);
  }
  const int64_t n = shard.numel();
  const int nd = static_cast<int>(local.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i;
    int64_t global_index = 0;
    int64_t global_stride = 1;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t coordinate = rest % local[d] + slice.offsets[d];
      rest /= local[d];
      global_index += coordinate * global_stride;
      global_stride *= global[d];
    }
    fill(i, global_index);
  }
}

}  // namespace

void InitNormal(Tensor* shard, const ShardSlice& slice, uint64_t seed, uint64_t stream, double mean,
                double std) {
  const Philox philox(seed, stream);
  ForEachGlobalIndex(*shard, slice, [&](int64_t i, int64_t g) {
    shard->SetFromDouble(i, mean + std * philox.Normal(static_cast<uint64_t>(g)));
  });
}

void InitUniform(Tensor* shard, const ShardSlice& slice, uint64_t seed, uint64_t stream, double low,
                 double high) {
  const Philox philox(seed, stream);
  ForEachGlobalIndex(*shard, slice, [&](int64_t i, int64_t g) {
    shard->SetFromDouble(i, low + (high - low) * philox.Uniform(static_cast<uint64_t>(g)));
  });
}

}  // namespace moe
