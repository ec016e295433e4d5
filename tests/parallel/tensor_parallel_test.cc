// The tensor- and sequence-parallel layers under mpirun (1, 2 and 4 ranks:
// tests/parallel/CMakeLists.txt) against the unsharded core layers on the
// same random inputs. Every TP size that divides the world is run, each on
// the TP groups RankGrid builds (so on 4 ranks, TP = 2 runs as two groups
// side by side). Weights are drawn with Philox keyed by the whole tensor's
// element index, the reference whole and each TP layer through its
// Parameter::slice, and must agree bit for bit before anything runs.
//
// Checked: the forward output, dx and every weight-gradient shard, after two
// forward/backward steps (gradients accumulate), with and without sequence
// parallelism, for batch 1 (the gathered blocks are in order) and batch 2
// (they are interleaved). Tolerance, relative to the reference's largest
// magnitude: 1e-5 in fp32 and 1e-12 in fp64 (only the order of the sums over
// TP differs).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/layers/cross_entropy.h"
#include "core/layers/embedding.h"
#include "core/layers/linear.h"
#include "core/philox.h"
#include "model/attention_block.h"
#include "model/model.h"
#include "parallel/rank_grid.h"
#include "parallel/tensor_parallel/column_parallel_linear.h"
#include "parallel/tensor_parallel/row_parallel_linear.h"
#include "parallel/tensor_parallel/sequence_parallel.h"
#include "parallel/tensor_parallel/shard.h"
#include "parallel/tensor_parallel/tp_attention.h"
#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"
#include "parallel/tensor_parallel/vocab_parallel_embedding.h"
#include "tests/parallel/mpi_test_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomIds;
using testing::RandomTensor;
using testing::World;

constexpr uint64_t kSeed = 1234;
constexpr DType kDtypes[] = {DType::kF32, DType::kF64};

double Tolerance(DType dtype) { return dtype == DType::kF64 ? 1e-12 : 1e-5; }

// The TP sizes this world can run.
std::vector<int> TpSizes() {
  std::vector<int> sizes;
  for (int tp = 1; tp <= World().size(); tp *= 2) {
    if (World().size() % tp == 0) sizes.push_back(tp);
  }
  return sizes;
}

// This rank's TP group of a grid with TP = tp and DP = world / tp
// (collective over the world: every rank calls it with the same tp).
std::unique_ptr<Communicator> TpGroup(int tp) {
  absl::StatusOr<RankGrid> grid = RankGrid::Create(World().size(), {.tp = tp});
  MOE_CHECK(grid.ok()) << grid.status().message();
  const SplitColor c = grid->Color(GroupKind::kTp, World().rank());
  return World().Split(c.color, c.key);
}

// The block of a 2-D `whole` that `slice` names, `shape` big.
Tensor SliceOf(const Tensor& whole, const ShardSlice& slice, const Shape& shape) {
  MOE_CHECK(whole.ndim() == 2 && shape.size() == 2) << whole.Describe();
  Tensor out = Tensor::Empty(shape, whole.dtype());
  for (int64_t r = 0; r < shape[0]; ++r) {
    for (int64_t c = 0; c < shape[1]; ++c) {
      out.SetFromDouble(r * shape[1] + c, whole.GetAsDouble((r + slice.offsets[0]) * whole.dim(1) +
                                                            c + slice.offsets[1]));
    }
  }
  return out;
}

// Columns [begin, begin + count) of the last dimension.
Tensor LastDimSlice(const Tensor& t, int64_t begin, int64_t count) {
  const int64_t cols = t.dim(-1), rows = t.numel() / cols;
  Shape shape = t.shape();
  shape.back() = count;
  return SliceOf(t.Reshape({rows, cols}), {{rows, cols}, {0, begin}}, {rows, count}).Reshape(shape);
}

// Rank `rank`'s sequence block [batch, seq/tp, ...] of [batch, seq, ...].
Tensor SequenceBlock(const Tensor& t, int rank, int tp) {
  const int64_t batch = t.dim(0), inner = t.numel() / batch, block = inner / tp;
  Shape shape = t.shape();
  shape[1] /= tp;
  return SliceOf(t.Reshape({batch, inner}), {{batch, inner}, {0, rank * block}}, {batch, block})
      .Reshape(shape);
}

// Draws the reference's whole weight and the TP layer's slice of it.
void InitPair(Parameter* whole, Parameter* shard, double std) {
  ASSERT_EQ(whole->name, shard->name);
  const uint64_t stream = ParameterStream(whole->name);
  InitNormal(&whole->value, ShardSlice::Whole(whole->value.shape()), kSeed, stream, 0.0, std);
  InitNormal(&shard->value, shard->slice, kSeed, stream, 0.0, std);
  EXPECT_EQ(
      MaxRelativeError(shard->value, SliceOf(whole->value, shard->slice, shard->value.shape())),
      0.0)
      << shard->name << ": the shard did not draw its slice of the whole tensor";
}

void ExpectGradSlice(const Parameter& whole, const Parameter& shard, DType dtype) {
  EXPECT_LT(MaxRelativeError(shard.grad, SliceOf(whole.grad, shard.slice, shard.grad.shape())),
            Tolerance(dtype))
      << shard.name << " gradient";
}

struct Case {
  int tp;
  DType dtype;
  bool sp;
  int64_t batch;
  std::string Describe() const {
    return "tp=" + std::to_string(tp) + " " + std::string(DTypeName(dtype)) +
           (sp ? " sequence parallel" : "") + " batch=" + std::to_string(batch);
  }
};

// Calls body(case, tp communicator) for every TP size, dtype, SP on/off and
// batch 1 and 2.
template <typename Body>
void ForEachCase(Body body) {
  for (int tp : TpSizes()) {
    const std::unique_ptr<Communicator> comm = TpGroup(tp);
    ASSERT_EQ(comm->size(), tp);
    for (DType dtype : kDtypes) {
      for (bool sp : {false, true}) {
        for (int64_t batch : {1, 2}) {
          const Case c{tp, dtype, sp, batch};
          SCOPED_TRACE(c.Describe());
          body(c, comm.get());
        }
      }
    }
  }
}

constexpr int64_t kSeq = 8;  // divisible by every TP size run
constexpr int kSteps = 2;

TEST(ColumnParallelLinearTest, MatchesLinear) {
  const int64_t in = 12, out = 24;
  ForEachCase([&](const Case& c, Communicator* tp) {
    Linear ref("proj", in, out, c.dtype);
    ColumnParallelLinear layer("proj", in, out, tp, c.sp, c.dtype);
    InitPair(&ref.weight(), &layer.weight(), 0.5);
    const int64_t begin = layer.weight().slice.offsets[0], local = layer.local_out_features();
    EXPECT_EQ(local, out / c.tp);
    for (int step = 0; step < kSteps; ++step) {
      const Tensor x = RandomTensor({c.batch, kSeq, in}, c.dtype, 10 + step);
      const Tensor dy = RandomTensor({c.batch, kSeq, out}, c.dtype, 20 + step);
      Linear::Saved ref_saved;
      const Tensor y_ref = ref.Forward(x, &ref_saved);
      const Tensor dx_ref = ref.Backward(dy, ref_saved);

      ColumnParallelLinear::Saved saved;
      const Tensor y = layer.Forward(c.sp ? SequenceBlock(x, tp->rank(), c.tp) : x, &saved);
      EXPECT_LT(MaxRelativeError(y, LastDimSlice(y_ref, begin, local)), Tolerance(c.dtype));
      // Odd steps leave dx's collective running past the call.
      HandlePtr pending;
      const Tensor dy_local = LastDimSlice(dy, begin, local);
      const Tensor dx = step % 2 == 0 ? layer.Backward(dy_local, saved)
                                      : layer.BackwardAsync(dy_local, saved, &pending);
      if (pending != nullptr) pending->Wait();
      EXPECT_LT(MaxRelativeError(dx, c.sp ? SequenceBlock(dx_ref, tp->rank(), c.tp) : dx_ref),
                Tolerance(c.dtype));
    }
    ExpectGradSlice(ref.weight(), layer.weight(), c.dtype);
  });
}

TEST(RowParallelLinearTest, MatchesLinear) {
  const int64_t in = 24, out = 12;
  ForEachCase([&](const Case& c, Communicator* tp) {
    Linear ref("proj", in, out, c.dtype);
    RowParallelLinear layer("proj", in, out, tp, c.sp, c.dtype);
    InitPair(&ref.weight(), &layer.weight(), 0.5);
    const int64_t begin = layer.weight().slice.offsets[1], local = layer.local_in_features();
    EXPECT_EQ(local, in / c.tp);
    for (int step = 0; step < kSteps; ++step) {
      const Tensor x = RandomTensor({c.batch, kSeq, in}, c.dtype, 30 + step);
      const Tensor dy = RandomTensor({c.batch, kSeq, out}, c.dtype, 40 + step);
      Linear::Saved ref_saved;
      const Tensor y_ref = ref.Forward(x, &ref_saved);
      const Tensor dx_ref = ref.Backward(dy, ref_saved);

      RowParallelLinear::Saved saved;
      // Odd steps wait for the output's collective themselves.
      HandlePtr pending;
      const Tensor x_local = LastDimSlice(x, begin, local);
      const Tensor y = step % 2 == 0 ? layer.Forward(x_local, &saved)
                                     : layer.ForwardAsync(x_local, &saved, &pending);
      if (pending != nullptr) pending->Wait();
      EXPECT_LT(MaxRelativeError(y, c.sp ? SequenceBlock(y_ref, tp->rank(), c.tp) : y_ref),
                Tolerance(c.dtype));
      const Tensor dx = layer.Backward(c.sp ? SequenceBlock(dy, tp->rank(), c.tp) : dy, saved);
      EXPECT_LT(MaxRelativeError(dx, LastDimSlice(dx_ref, begin, local)), Tolerance(c.dtype));
    }
    ExpectGradSlice(ref.weight(), layer.weight(), c.dtype);
  });
}

TEST(VocabParallelEmbeddingTest, MatchesEmbedding) {
  const int64_t vocab = 40, dim = 12;
  ForEachCase([&](const Case& c, Communicator* tp) {
    Embedding ref("model.embed_tokens", vocab, dim, c.dtype);
    VocabParallelEmbedding layer("model.embed_tokens", vocab, dim, tp, c.sp, c.dtype);
    InitPair(&ref.weight(), &layer.weight(), 1.0);
    EXPECT_EQ(layer.vocab_begin(), tp->rank() * vocab / c.tp);
    for (int step = 0; step < kSteps; ++step) {
      // Repeated ids accumulate; every shard is hit with 16 tokens of 40.
      Tensor ids = RandomIds({c.batch, kSeq}, vocab, 50 + step);
      ids.data<int32_t>()[0] = ids.data<int32_t>()[1];
      const Tensor dout = RandomTensor({c.batch, kSeq, dim}, c.dtype, 60 + step);
      Embedding::Saved ref_saved;
      const Tensor out_ref = ref.Forward(ids, &ref_saved);
      ref.Backward(dout, ref_saved);

      VocabParallelEmbedding::Saved saved;
      const Tensor out = layer.Forward(ids, &saved);
      EXPECT_LT(MaxRelativeError(out, c.sp ? SequenceBlock(out_ref, tp->rank(), c.tp) : out_ref),
                Tolerance(c.dtype));
      layer.Backward(c.sp ? SequenceBlock(dout, tp->rank(), c.tp) : dout, saved);
    }
    ExpectGradSlice(ref.weight(), layer.weight(), c.dtype);
  });
}

TEST(VocabParallelCrossEntropyTest, MatchesCrossEntropy) {
  const int64_t vocab = 40, hidden = 12;
  // Chunks of 3 cut through every shard (10, 20 or 40 rows) unevenly.
  const int64_t chunk = 3;
  ForEachCase([&](const Case& c, Communicator* tp) {
    Parameter ref_w("lm_head.weight", {vocab, hidden}, c.dtype, Device::kCpu);
    // The model's LM head: a column-parallel Linear holds exactly the rows.
    ColumnParallelLinear lm_head("lm_head", hidden, vocab, tp, c.sp, c.dtype);
    InitPair(&ref_w, &lm_head.weight(), 1.0);
    const CrossEntropy ref(chunk);
    const VocabParallelCrossEntropy loss(tp, c.sp, chunk);
    const double scale = 1.0 / 7;
    for (int step = 0; step < kSteps; ++step) {
      const Tensor h = RandomTensor({c.batch, kSeq, hidden}, c.dtype, 70 + step);
      Tensor labels = RandomIds({c.batch, kSeq}, vocab, 80 + step);
      labels.data<int32_t>()[3] = -100;  // ignored
      labels.data<int32_t>()[5] = vocab - 1;

      CrossEntropy::Saved ref_saved;
      const int64_t tokens = c.batch * kSeq;
      const CrossEntropy::Result r = ref.Forward(h.Reshape({tokens, hidden}), ref_w.value,
                                                 labels.Reshape({tokens}), &ref_saved);
      const Tensor dh_ref =
          ref.Backward(scale, ref_w.value, ref_saved, &ref_w.grad).Reshape(h.shape());

      VocabParallelCrossEntropy::Saved saved;
      const VocabParallelCrossEntropy::Result result = loss.Forward(
          c.sp ? SequenceBlock(h, tp->rank(), c.tp) : h, lm_head.weight().value, labels, &saved);
      EXPECT_EQ(result.tokens, r.tokens);
      EXPECT_NEAR(result.loss_sum, r.loss_sum, Tolerance(c.dtype) * std::abs(r.loss_sum));
      const Tensor dh = loss.Backward(scale, lm_head.weight().value, saved, &lm_head.weight().grad);
      EXPECT_LT(MaxRelativeError(dh, c.sp ? SequenceBlock(dh_ref, tp->rank(), c.tp) : dh_ref),
                Tolerance(c.dtype));
    }
    ExpectGradSlice(ref_w, lm_head.weight(), c.dtype);
  });
}

// Groups split over TP (8 kv heads), replicated on 2 ranks at TP 4 (2 kv
// heads), and one group on every rank (multi-query).
struct HeadCase {
  int64_t heads;
  int64_t kv_heads;
};
constexpr HeadCase kHeadCases[] = {{8, 8}, {8, 2}, {4, 1}};

TEST(TpAttentionTest, MatchesAttentionBlock) {
  for (const HeadCase& hc : kHeadCases) {
    SCOPED_TRACE("heads=" + std::to_string(hc.heads) + " kv_heads=" + std::to_string(hc.kv_heads));
    ModelConfig config;
    config.hidden_size = 16;
    config.num_attention_heads = hc.heads;
    config.num_key_value_heads = hc.kv_heads;
    config.head_dim = 4;
    config.max_position_embeddings = 64;
    config.rope_theta = 10000;
    const TpAttentionSizes sizes{16, hc.heads, hc.kv_heads, 4};
    const std::string name = "model.layers.0.self_attn";
    ForEachCase([&](const Case& c, Communicator* tp) {
      auto rope = std::make_shared<const Rope>(4, 64, 10000.0, c.dtype);
      AttentionBlock ref(name, config, rope, c.dtype);
      TpAttention layer(name, sizes, rope, tp, c.sp, c.dtype);
      const std::vector<Parameter*> ref_params = ref.Parameters();
      const std::vector<Parameter*> params = layer.Parameters();
      ASSERT_EQ(params.size(), ref_params.size());
      for (size_t i = 0; i < params.size(); ++i) InitPair(ref_params[i], params[i], 0.3);
      const int64_t replicas = c.tp > hc.kv_heads ? c.tp / hc.kv_heads : 1;
      EXPECT_EQ(layer.kv_replicas(), replicas);
      EXPECT_EQ(TpCopies(layer.k_proj(), c.tp), replicas);
      EXPECT_EQ(TpCopies(layer.q_proj(), c.tp), 1);

      for (int step = 0; step < kSteps; ++step) {
        const Tensor x = RandomTensor({c.batch, kSeq, 16}, c.dtype, 90 + step);
        const Tensor dy = RandomTensor({c.batch, kSeq, 16}, c.dtype, 100 + step);
        AttentionBlock::Saved ref_saved;
        const Tensor y_ref = ref.Forward(x, &ref_saved);
        const Tensor dx_ref = ref.Backward(dy, ref_saved);

        TpAttention::Saved saved;
        const auto local = [&](const Tensor& t) {
          return c.sp ? SequenceBlock(t, tp->rank(), c.tp) : t;
        };
        HandlePtr pending;
        const Tensor y = step % 2 == 0 ? layer.Forward(local(x), &saved)
                                       : layer.ForwardAsync(local(x), &saved, &pending);
        if (pending != nullptr) pending->Wait();
        EXPECT_LT(MaxRelativeError(y, local(y_ref)), Tolerance(c.dtype));
        const Tensor dx = layer.Backward(local(dy), saved);
        EXPECT_LT(MaxRelativeError(dx, local(dx_ref)), Tolerance(c.dtype));
      }
      for (size_t i = 0; i < params.size(); ++i) {
        ExpectGradSlice(*ref_params[i], *params[i], c.dtype);
      }
    });
  }
}

// The mappings alone, on a [3, seq, 2, 5] tensor: slice, gather and
// reduce-scatter against each rank's block worked out here.
TEST(SequenceParallelTest, GatherSliceAndReduceScatterInvertEachOther) {
  for (int tp : TpSizes()) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    const std::unique_ptr<Communicator> comm = TpGroup(tp);
    const Tensor full = RandomTensor({3, 4 * tp, 2, 5}, DType::kF64, 7);
    const Tensor shard = SliceSequence("test", full, comm.get());
    EXPECT_EQ(MaxRelativeError(shard, SequenceBlock(full, comm->rank(), tp)), 0.0);
    EXPECT_EQ(MaxRelativeError(GatherSequence("test", shard, comm.get()), full), 0.0);
    // Rank r adds (r + 1) * full: each block sums to tp (tp + 1) / 2 times it.
    Tensor partial = full.Clone();
    for (int64_t i = 0; i < partial.numel(); ++i) {
      partial.SetFromDouble(i, (comm->rank() + 1) * full.GetAsDouble(i));
    }
    Tensor reduced;
    ReduceScatterSequenceAsync("test", partial, comm.get(), &reduced)->Wait();
    Tensor expected = SequenceBlock(full, comm->rank(), tp);
    for (int64_t i = 0; i < expected.numel(); ++i) {
      expected.SetFromDouble(i, tp * (tp + 1) / 2 * expected.GetAsDouble(i));
    }
    EXPECT_LT(MaxRelativeError(reduced, expected), 1e-15);
  }
}

TEST(GatherLastDimTest, ConcatenatesTheRanksColumns) {
  for (int tp : TpSizes()) {
    const std::unique_ptr<Communicator> comm = TpGroup(tp);
    const Tensor whole = RandomTensor({2, 3, 5 * tp}, DType::kF32, 8);
    const Tensor local = LastDimSlice(whole, comm->rank() * 5, 5);
    EXPECT_EQ(MaxRelativeError(GatherLastDim(local, comm.get()), whole), 0.0) << "tp=" << tp;
  }
}

}  // namespace
}  // namespace moe
