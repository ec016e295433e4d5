// The whole model under tensor + sequence parallelism (model/model.h) under
// mpirun (2 and 4 ranks: tests/parallel/CMakeLists.txt) against the one-rank
// model, in kF64. Every TP size > 1 that divides the world runs on the TP
// groups RankGrid builds, with the experts replicated on every TP rank or
// split over them (EP = TP, the expert grid folded over TP), and with the
// Hugging Face aux loss or the sequence-level one plus a shared expert.
//
// Checked: each shard's initial weights are its slice of the one-rank
// weights (bit for bit); one ForwardBackward gives the one-rank losses and
// expert counts on every TP rank; after the trainer's reduction (the whole
// parameters' grads summed over TP, replicated experts' too) every gradient
// is its slice of the one-rank gradient; Evaluate, Logits and RouterLogits
// give the one-rank values. Tolerance 1e-10 relative (only the order of the
// sums over TP differs); the logits are fp32, 1e-6.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "parallel/rank_grid.h"
#include "parallel/tensor_parallel/shard.h"
#include "tests/parallel/mpi_test_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomIds;
using testing::World;

constexpr uint64_t kSeed = 77;
constexpr double kTolerance = 1e-10;
constexpr int64_t kBatch = 2;
constexpr int64_t kSeq = 8;  // divisible by every TP size run

ModelConfig TinyConfig() {
  ModelConfig c;
  c.vocab_size = 32;
  c.hidden_size = 16;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;  // TP 4 replicates each group on 2 ranks
  c.num_local_experts = 4;
  c.num_experts_per_tok = 2;
  c.max_position_embeddings = kSeq;
  c.rope_theta = 10000;
  c.router_aux_loss_coef = 1e-2;
  c.router_z_loss_coef = 1e-3;
  c.initializer_range = 0.2;
  return c;
}

// This rank's group of `kind` in a grid with TP = EP = tp (collective).
std::unique_ptr<Communicator> Group(int tp, GroupKind kind) {
  absl::StatusOr<RankGrid> grid = RankGrid::Create(World().size(), {.tp = tp, .ep = tp});
  MOE_CHECK(grid.ok()) << grid.status().message();
  const SplitColor c = grid->Color(kind, World().rank());
  return World().Split(c.color, c.key);
}

// The box of `whole` (1-D or 2-D) that `shard`'s slice names.
Tensor SliceOf(const Tensor& whole, const Parameter& shard) {
  if (shard.slice.offsets.size() != shard.value.shape().size() ||
      shard.slice.global_shape == shard.value.shape()) {
    return whole;
  }
  MOE_CHECK(whole.ndim() == 2) << shard.name << ": " << whole.Describe();
  const Shape& shape = shard.value.shape();
  Tensor out = Tensor::Empty(shape, whole.dtype());
  for (int64_t r = 0; r < shape[0]; ++r) {
    for (int64_t c = 0; c < shape[1]; ++c) {
      out.SetFromDouble(r * shape[1] + c,
                        whole.GetAsDouble((r + shard.slice.offsets[0]) * whole.dim(1) + c +
                                          shard.slice.offsets[1]));
    }
  }
  return out;
}

// Sums the grads of `params` over `tp`, as the trainer does.
void SumGrads(const std::vector<Parameter*>& params, Communicator* tp) {
  for (Parameter* p : params) tp->AllReduceSync(p->grad, ReduceOp::kSum);
}

void ExpectSameLosses(const Losses& want, const Losses& got) {
  EXPECT_NEAR(got.lm_loss_sum, want.lm_loss_sum, kTolerance * std::abs(want.lm_loss_sum));
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_NEAR(got.aux_loss, want.aux_loss, kTolerance * std::abs(want.aux_loss));
  EXPECT_NEAR(got.z_loss, want.z_loss, kTolerance * std::abs(want.z_loss));
  EXPECT_EQ(got.expert_tokens, want.expert_tokens);
  EXPECT_EQ(got.expert_dropped, want.expert_dropped);
  EXPECT_EQ(got.expert_routed, want.expert_routed);
  ASSERT_EQ(got.router_entropy.size(), want.router_entropy.size());
  for (size_t i = 0; i < want.router_entropy.size(); ++i) {
    EXPECT_NEAR(got.router_entropy[i], want.router_entropy[i], kTolerance);
  }
}

struct Variant {
  const char* name;
  bool expert_parallel;  // EP = TP, else every TP rank holds every expert
  const char* load_balancing;
  int64_t shared_expert;  // moe_shared_expert_intermediate_size
};
constexpr Variant kVariants[] = {
    {"replicated experts, hf_aux_loss", false, "hf_aux_loss", 0},
    {"EP = TP, hf_aux_loss", true, "hf_aux_loss", 0},
    {"replicated experts, seq_aux_loss, shared expert", false, "seq_aux_loss", 8},
    {"EP = TP, seq_aux_loss, shared expert", true, "seq_aux_loss", 8},
};

TEST(TpModelTest, MatchesTheOneRankModel) {
  for (int tp = 2; tp <= World().size(); tp *= 2) {
    if (World().size() % tp != 0) continue;
    const std::unique_ptr<Communicator> tp_comm = Group(tp, GroupKind::kTp);
    const std::unique_ptr<Communicator> ep_comm = Group(tp, GroupKind::kEp);
    ASSERT_EQ(tp_comm->size(), tp);
    for (const Variant& v : kVariants) {
      SCOPED_TRACE("tp=" + std::to_string(tp) + " " + v.name);
      ModelConfig config = TinyConfig();
      config.moe_router_load_balancing_type = v.load_balancing;
      config.moe_shared_expert_intermediate_size = v.shared_expert;
      Model ref(config, DType::kF64);
      Model model(config, DType::kF64, Device::kCpu,
                  ModelParallel{.tp = tp_comm.get(),
                                .sequence_parallel = true,
                                .ep = v.expert_parallel ? ep_comm.get() : nullptr});
      ref.InitializeWeights(kSeed);
      model.InitializeWeights(kSeed);
      EXPECT_EQ(model.NumParameters(), ref.NumParameters());
      EXPECT_EQ(model.tp(), tp_comm.get());
      for (Parameter* p : model.Parameters()) {
        const Parameter* whole = ref.FindParameter(p->name);
        ASSERT_NE(whole, nullptr) << p->name;
        EXPECT_EQ(MaxRelativeError(p->value, SliceOf(whole->value, *p)), 0.0)
            << p->name << ": the shard did not draw its slice of the one-rank weights";
      }
      // Whole on every TP rank: norms, routers, the shared expert.
      for (Parameter* p : model.TpReplicatedParameters()) {
        EXPECT_EQ(p->value.shape(), ref.FindParameter(p->name)->value.shape()) << p->name;
        EXPECT_EQ(p->name.find("self_attn"), std::string::npos) << p->name;
        EXPECT_EQ(p->name.find(".experts."), std::string::npos) << p->name;
      }

      const Tensor ids = RandomIds({kBatch, kSeq}, config.vocab_size, 5);
      const Tensor labels = RandomIds({kBatch, kSeq}, config.vocab_size, 6);
      const LossScales scales{.lm = 1.0 / (kBatch * kSeq), .aux = 0.5, .z = 0.5};
      const Losses want = ref.ForwardBackward(ids, labels, scales);
      const Losses got = model.ForwardBackward(ids, labels, scales);
      ExpectSameLosses(want, got);

      SumGrads(model.TpReplicatedParameters(), tp_comm.get());
      // Replicated experts are reduced over EDP (which spans TP) in the trainer.
      if (!v.expert_parallel) SumGrads(model.ExpertParameters(), tp_comm.get());
      for (Parameter* p : model.Parameters()) {
        EXPECT_LT(MaxRelativeError(p->grad, SliceOf(ref.FindParameter(p->name)->grad, *p)),
                  kTolerance)
            << p->name << " gradient";
      }

      ExpectSameLosses(ref.Evaluate(ids, labels), model.Evaluate(ids, labels));
      EXPECT_LT(MaxRelativeError(model.Logits(ids), ref.Logits(ids)), 1e-6);
      const std::vector<Tensor> router_want = ref.RouterLogits(ids);
      const std::vector<Tensor> router_got = model.RouterLogits(ids);
      ASSERT_EQ(router_got.size(), router_want.size());
      for (size_t i = 0; i < router_want.size(); ++i) {
        ASSERT_EQ(router_got[i].shape(), router_want[i].shape());
        EXPECT_LT(MaxRelativeError(router_got[i], router_want[i]), kTolerance) << "layer " << i;
      }
    }
  }
}

}  // namespace
}  // namespace moe
