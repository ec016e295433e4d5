// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"):
// a counter-based generator. The value for a counter depends only on
// (key, counter), never on what was drawn before, so a parameter element is
// keyed by its index in the unsharded tensor: a shard initialised on its own
// draws exactly its slice of the whole tensor, on any number of ranks.
#ifndef MOE_CORE_PHILOX_H_
#define MOE_CORE_PHILOX_H_

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace moe {

class Philox {
 public:
  // `seed` is the run's seed; `stream` separates independent uses (one per
  // parameter, say) so that they never share counters.
  Philox(uint64_t seed, uint64_t stream);

  // Four independent 32-bit words for `counter`.
  std::array<uint32_t, 4> Block(uint64_t counter) const;
  // Uniform in [0, 1) with 24 random bits, from word 0 of Block(counter).
  float Uniform(uint64_t counter) const;
  // Standard normal from words 0 and 1 of Block(counter) (Box-Muller in double).
  double Normal(uint64_t counter) const;

 private:
  std::array<uint32_t, 2> key_;
  uint32_t stream_lo_;
  uint32_t stream_hi_;
};

// Where a shard sits inside the unsharded ("global") tensor: its global shape
// and, per dimension, the offset of the shard's first element. A whole tensor
// is the shard with offsets all zero and global shape equal to its own.
struct ShardSlice {
  Shape global_shape;
  std::vector<int64_t> offsets;

  static ShardSlice Whole(const Shape& shape);
};

// Fills `shard` (CPU, floating dtype) with N(mean, std^2): element with global
// flat index g gets mean + std * Philox(seed, stream).Normal(g).
void InitNormal(Tensor* shard, const ShardSlice& slice, uint64_t seed, uint64_t stream, double mean,
                double std);
// Fills `shard` with U[low, high) keyed the same way.
void InitUniform(Tensor* shard, const ShardSlice& slice, uint64_t seed, uint64_t stream, double low,
                 double high);

}  // namespace moe

#endif  // MOE_CORE_PHILOX_H_
