// GradBuckets and the DistributedOptimizer under mpirun (1, 2, 3 and 4 ranks:
// tests/parallel/CMakeLists.txt), against a serial reference every rank
// computes: the summed gradient of all ranks' Philox grads, and one
// single-rank AdamW stepped on it. Parameter sizes are odd so that buckets and
// chunks cut through parameters and the last chunk holds padding; bucket
// sizes of 64 bytes (many buckets, some holding one large parameter) and 1 MB
// (one bucket) are both run.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/optim/adamw.h"
#include "core/optim/grad_clip.h"
#include "parallel/distributed_optimizer.h"
#include "parallel/grad_buckets.h"
#include "tests/parallel/mpi_test_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomTensor;
using testing::World;

struct Spec {
  const char* name;
  Shape shape;
};
// 1-D and ".bias" parameters get no weight decay (DefaultNoDecay).
const Spec kSpecs[] = {{"a.weight", {7, 5}},   {"norm.weight", {13}}, {"b.weight", {3, 11}},
                       {"c.bias", {9}},        {"d.weight", {17, 4}}, {"e.weight", {2, 3}},
                       {"big.weight", {61, 3}}};

std::vector<std::unique_ptr<Parameter>> MakeParams() {
  std::vector<std::unique_ptr<Parameter>> params;
  for (size_t i = 0; i < std::size(kSpecs); ++i) {
    auto p =
        std::make_unique<Parameter>(kSpecs[i].name, kSpecs[i].shape, DType::kF32, Device::kCpu);
    p->value.CopyFrom(RandomTensor(kSpecs[i].shape, DType::kF32, 1 + i));
    params.push_back(std::move(p));
  }
  return params;
}

std::vector<Parameter*> Pointers(const std::vector<std::unique_ptr<Parameter>>& params) {
  std::vector<Parameter*> out;
  for (const auto& p : params) out.push_back(p.get());
  return out;
}

Tensor RankGrad(size_t param, int rank, int step) {
  return RandomTensor(kSpecs[param].shape, DType::kF32, 1000 + 100 * step + 10 * rank + param);
}

// Sets every parameter's grad to this rank's grad of `step`.
void SetLocalGrads(const std::vector<std::unique_ptr<Parameter>>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) {
    params[i]->grad.CopyFrom(RankGrad(i, World().rank(), step));
  }
}

// Sets every parameter's grad to the sum over all ranks (in double).
void SetSummedGrads(const std::vector<std::unique_ptr<Parameter>>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<double> sum(static_cast<size_t>(params[i]->grad.numel()), 0.0);
    for (int r = 0; r < World().size(); ++r) {
      const Tensor g = RankGrad(i, r, step);
      for (size_t k = 0; k < sum.size(); ++k) sum[k] += g.GetAsDouble(static_cast<int64_t>(k));
    }
    for (size_t k = 0; k < sum.size(); ++k) {
      params[i]->grad.SetFromDouble(static_cast<int64_t>(k), sum[k]);
    }
  }
}

constexpr int64_t kBucketSizes[] = {64, 1 << 20};

TEST(GradBucketsTest, AllReduceSumsEveryGradient) {
  for (int64_t bucket_bytes : kBucketSizes) {
    auto params = MakeParams();
    auto expected = MakeParams();
    GradBuckets buckets(Pointers(params), &World(), bucket_bytes, GradBuckets::Mode::kAllReduce);
    if (bucket_bytes == 64) {
      EXPECT_GT(buckets.buckets().size(), 3u);
    }
    // Reverse Parameters() order: the last parameter leads the first bucket.
    EXPECT_EQ(buckets.buckets().front().slots.front().param, params.back().get());
    SetLocalGrads(params, 0);
    SetSummedGrads(expected, 0);
    buckets.Reduce();
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_LT(MaxRelativeError(params[i]->grad, expected[i]->grad), 1e-6)
          << params[i]->name << " with " << bucket_bytes << "-byte buckets";
    }
    Tensor sq = Tensor::Empty({1}, DType::kF64);
    sq.data<double>()[0] = buckets.OwnedSquaredNorm();
    World().AllReduceSync(sq, ReduceOp::kSum);
    const double want = GradSquaredNorm(Pointers(expected));
    EXPECT_NEAR(sq.data<double>()[0], want, 1e-6 * want);
  }
}

// As backward would: parameters marked ready in reverse order, each bucket
// issued as soon as its last parameter is ready (not before), the same sums
// as Reduce(), in both modes.
TEST(GradBucketsTest, MarkReadyIssuesEachBucketWhenItsLastParameterIsReady) {
  for (GradBuckets::Mode mode :
       {GradBuckets::Mode::kAllReduce, GradBuckets::Mode::kReduceScatter}) {
    auto params = MakeParams();
    auto expected = MakeParams();
    GradBuckets buckets(Pointers(params), &World(), 64, mode);
    GradBuckets reference(Pointers(expected), &World(), 64, mode);
    SetLocalGrads(params, 3);
    SetLocalGrads(expected, 3);
    reference.Reduce();
    size_t completed = 0;  // buckets whose every parameter is marked
    size_t marked_in_bucket = 0;
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      buckets.MarkReady(it->get());
      if (++marked_in_bucket == buckets.buckets()[completed].slots.size()) {
        ++completed;
        marked_in_bucket = 0;
      }
      EXPECT_EQ(buckets.issued(), completed) << "after " << (*it)->name;
    }
    buckets.Finish();
    for (size_t b = 0; b < buckets.buckets().size(); ++b) {
      const Tensor& got = mode == GradBuckets::Mode::kAllReduce ? buckets.buckets()[b].flat
                                                                : buckets.buckets()[b].shard;
      const Tensor& want = mode == GradBuckets::Mode::kAllReduce ? reference.buckets()[b].flat
                                                                 : reference.buckets()[b].shard;
      EXPECT_EQ(MaxRelativeError(got, want), 0.0) << "bucket " << b;
    }
    EXPECT_DEATH(
        {
          buckets.MarkReady(params[0].get());
          buckets.MarkReady(params[0].get());
        },
        "marked twice");
  }
}

TEST(GradBucketsTest, ReduceScatterKeepsTheOwnChunk) {
  auto params = MakeParams();
  auto expected = MakeParams();
  GradBuckets buckets(Pointers(params), &World(), 64, GradBuckets::Mode::kReduceScatter);
  SetLocalGrads(params, 1);
  SetSummedGrads(expected, 1);
  buckets.Reduce();
  for (size_t b = 0; b < buckets.buckets().size(); ++b) {
    const GradBuckets::Bucket& bucket = buckets.buckets()[b];
    // The expected flat bucket, padding zero.
    std::vector<double> flat(static_cast<size_t>(bucket.padded), 0.0);
    for (const GradBuckets::Slot& slot : bucket.slots) {
      for (size_t i = 0; i < params.size(); ++i) {
        if (params[i].get() != slot.param) continue;
        for (int64_t k = 0; k < expected[i]->grad.numel(); ++k) {
          flat[static_cast<size_t>(slot.offset + k)] = expected[i]->grad.GetAsDouble(k);
        }
      }
    }
    const int64_t begin = buckets.ChunkBegin(b);
    for (int64_t k = 0; k < buckets.ChunkSize(b); ++k) {
      const double want = flat[static_cast<size_t>(begin + k)];
      EXPECT_NEAR(bucket.shard.GetAsDouble(k), want, 1e-6 * (1 + std::abs(want)))
          << "bucket " << b << " element " << begin + k;
    }
  }
}

AdamW::Options TestOptions() {
  AdamW::Options options;
  options.weight_decay = 0.1;  // large enough that a wrong no-decay rule shows
  options.beta2 = 0.95;
  return options;
}

// Three steps of (reduce, global norm, clip, AdamW) against single-rank AdamW
// on the summed gradient.
TEST(DistributedOptimizerTest, MatchesSingleRankAdamW) {
  for (int64_t bucket_bytes : kBucketSizes) {
    auto params = MakeParams();
    auto reference = MakeParams();
    DistributedOptimizer dist(Pointers(params), &World(), TestOptions(), bucket_bytes);
    AdamW adam(Pointers(reference), TestOptions());
    for (int step = 0; step < 3; ++step) {
      SetLocalGrads(params, step);
      SetSummedGrads(reference, step);
      dist.ReduceGradients();
      const double sq = dist.SquaredGradNorm();
      const double want = GradSquaredNorm(adam.params());
      ASSERT_NEAR(sq, want, 1e-6 * want) << "step " << step;
      const double max_norm = 0.5 * std::sqrt(want);  // clipping is active
      ClipGradNorm(dist.shard_params(), max_norm, sq);
      ClipGradNorm(adam.params(), max_norm, want);
      const double lr = 1e-2 * (step + 1);
      dist.Step(lr);
      adam.Step(lr);
    }
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_LT(MaxRelativeError(params[i]->value, reference[i]->value), 1e-6)
          << params[i]->name << " with " << bucket_bytes << "-byte buckets on " << World().size()
          << " ranks";
      EXPECT_EQ(GradSquaredNorm({params[i].get()}), 0.0) << "grads are zeroed by Step";
    }
    EXPECT_EQ(dist.step(), 3);
  }
}

TEST(DistributedOptimizerTest, StateIsOneShardOfAdamW) {
  auto params = MakeParams();
  DistributedOptimizer dist(Pointers(params), &World(), TestOptions(), 1 << 20);
  const int64_t total = dist.buckets().num_elements();
  const int64_t dp = World().size();
  EXPECT_EQ(dist.shard_elements(), (total + dp - 1) / dp);
}

// Plain DP: all-reduced grads and a replicated AdamW give the same weights.
TEST(GradBucketsTest, PlainDataParallelMatchesSingleRankAdamW) {
  auto params = MakeParams();
  auto reference = MakeParams();
  GradBuckets buckets(Pointers(params), &World(), 64, GradBuckets::Mode::kAllReduce);
  AdamW adam(Pointers(params), TestOptions());
  AdamW ref_adam(Pointers(reference), TestOptions());
  for (int step = 0; step < 3; ++step) {
    SetLocalGrads(params, step);
    SetSummedGrads(reference, step);
    buckets.Reduce();
    adam.Step(1e-2);
    ref_adam.Step(1e-2);
  }
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_LT(MaxRelativeError(params[i]->value, reference[i]->value), 1e-6) << params[i]->name;
  }
}

}  // namespace
}  // namespace moe
