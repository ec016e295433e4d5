// The tensor-parallel layers' refusals: sizes the TP group does not divide
// and malformed inputs end with a message naming the layer and the numbers.
// A plain (non-MPI) binary, since death tests fork: the layers see a
// stand-in TP group of 4 ranks, and every check fires before any traffic.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/tensor_parallel/column_parallel_linear.h"
#include "parallel/tensor_parallel/row_parallel_linear.h"
#include "parallel/tensor_parallel/tp_attention.h"
#include "parallel/tensor_parallel/vocab_parallel_cross_entropy.h"
#include "parallel/tensor_parallel/vocab_parallel_embedding.h"

namespace moe {
namespace {

// Rank `rank` of `size`; any traffic is a test bug.
class FakeGroup final : public Communicator {
 public:
  FakeGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "fake"; }
  HandlePtr AllReduce(Tensor, ReduceOp) override { return Fail(); }
  HandlePtr ReduceScatter(Tensor, const Tensor&) override { return Fail(); }
  HandlePtr AllGather(Tensor, const Tensor&) override { return Fail(); }
  HandlePtr Send(const Tensor&, int, int) override { return Fail(); }
  HandlePtr Recv(Tensor, int, int) override { return Fail(); }
  HandlePtr Broadcast(Tensor, int) override { return Fail(); }
  HandlePtr Barrier() override { return Fail(); }
  std::unique_ptr<Communicator> Split(int, int) override {
    Fail();
    return nullptr;
  }

 private:
  HandlePtr DoAllToAllV(Tensor*, std::vector<int64_t>*, const Tensor&, const std::vector<int64_t>&,
                        int64_t, const Tensor&) override {
    return Fail();
  }
  static HandlePtr Fail() {
    MOE_CHECK(false) << "FakeGroup: no communication expected";
    return nullptr;
  }

  int rank_;
  int size_;
};

TEST(TensorParallelDeathTest, ColumnParallelOutputNotDivisible) {
  FakeGroup tp(1, 4);
  EXPECT_DEATH(ColumnParallelLinear("model.layers.0.mlp.gate_proj", 16, 10, &tp, false),
               "model.layers.0.mlp.gate_proj.weight: out_features 10 is not divisible by the "
               "tensor-parallel size 4");
}

TEST(TensorParallelDeathTest, RowParallelInputNotDivisible) {
  FakeGroup tp(0, 4);
  EXPECT_DEATH(RowParallelLinear("model.layers.0.mlp.down_proj", 18, 16, &tp, false),
               "model.layers.0.mlp.down_proj.weight: in_features 18 is not divisible by the "
               "tensor-parallel size 4");
}

TEST(TensorParallelDeathTest, VocabNotDivisible) {
  FakeGroup tp(3, 4);
  EXPECT_DEATH(VocabParallelEmbedding("model.embed_tokens", 1001, 8, &tp, false),
               "model.embed_tokens.weight: vocab 1001 is not divisible by the tensor-parallel "
               "size 4 .*pad the vocabulary to a multiple of 4");
  // The LM head is a column-parallel Linear over the vocab.
  EXPECT_DEATH(ColumnParallelLinear("lm_head", 8, 1001, &tp, false),
               "lm_head.weight: out_features 1001 is not divisible by the tensor-parallel size 4");
}

TEST(TensorParallelDeathTest, HeadsNotDivisible) {
  FakeGroup tp(0, 4);
  auto rope = std::make_shared<const Rope>(4, 16, 10000.0);
  EXPECT_DEATH(TpAttention("model.layers.3.self_attn", {24, 6, 2, 4}, rope, &tp, false),
               "model.layers.3.self_attn: num_attention_heads 6 is not divisible by the "
               "tensor-parallel size 4 \\(each TP rank holds whole heads\\)");
  // 6 query groups on 4 ranks: neither splits nor replicates evenly.
  EXPECT_DEATH(TpAttention("model.layers.3.self_attn", {48, 12, 6, 4}, rope, &tp, false),
               "model.layers.3.self_attn: num_key_value_heads 6 and the tensor-parallel size 4: "
               "one must divide the other");
}

TEST(TensorParallelDeathTest, SequenceNotDivisible) {
  FakeGroup tp(0, 4);
  RowParallelLinear row("o_proj", 16, 8, &tp, /*sequence_parallel=*/true);
  RowParallelLinear::Saved saved;
  EXPECT_DEATH(row.Forward(Tensor::Zeros({2, 6, 4}, DType::kF32), &saved),
               "o_proj.weight: sequence parallelism splits the sequence over the 4 "
               "tensor-parallel ranks, but the sequence length 6 of f32\\[2, 6, 4\\] on cpu is "
               "not divisible by 4");
  VocabParallelEmbedding embed("model.embed_tokens", 40, 8, &tp, true);
  VocabParallelEmbedding::Saved embed_saved;
  EXPECT_DEATH(embed.Forward(Tensor::Zeros({2, 5}, DType::kI32), &embed_saved),
               "model.embed_tokens.weight: sequence parallelism .* sequence length 5");
}

TEST(TensorParallelDeathTest, BadInputsNameTheLayer) {
  FakeGroup tp(1, 4);
  ColumnParallelLinear column("q_proj", 16, 8, &tp, false);
  ColumnParallelLinear::Saved saved;
  EXPECT_DEATH(column.Forward(Tensor::Zeros({2, 3, 15}, DType::kF32), &saved),
               "q_proj.weight: input must be \\[..., 16\\], got f32\\[2, 3, 15\\]");
  ColumnParallelLinear column_sp("q_proj", 16, 8, &tp, true);
  EXPECT_DEATH(column_sp.Forward(Tensor::Zeros({6, 16}, DType::kF32), &saved),
               "q_proj.weight: under sequence parallelism the input must be \\[batch, seq/TP, "
               "16\\], got f32\\[6, 16\\]");
  RowParallelLinear row("o_proj", 16, 8, &tp, false);
  RowParallelLinear::Saved row_saved;
  EXPECT_DEATH(row.Forward(Tensor::Zeros({2, 16}, DType::kF32), &row_saved),
               "o_proj.weight: input must be \\[..., 4\\] \\(in_features 16 / TP 4\\)");

  VocabParallelEmbedding embed("model.embed_tokens", 40, 8, &tp, false);
  VocabParallelEmbedding::Saved embed_saved;
  Tensor ids = Tensor::Zeros({2, 3}, DType::kI32);
  ids.data<int32_t>()[4] = 40;
  EXPECT_DEATH(embed.Forward(ids, &embed_saved),
               "model.embed_tokens.weight: token id 40 at flat position 4 of ids \\[2, 3\\] is "
               "outside the vocabulary \\[0, 40\\)");

  const VocabParallelCrossEntropy loss(&tp, false);
  VocabParallelCrossEntropy::Saved loss_saved;
  Tensor labels = Tensor::Zeros({3}, DType::kI32);
  labels.data<int32_t>()[1] = 40;
  EXPECT_DEATH(loss.Forward(Tensor::Zeros({3, 8}, DType::kF32), Tensor::Zeros({10, 8}, DType::kF32),
                            labels, &loss_saved),
               "VocabParallelCrossEntropy: label 40 at position 1 is out of range for vocab 40 "
               "\\(4 TP ranks x 10 rows\\)");
  EXPECT_DEATH(loss.Forward(Tensor::Zeros({3, 8}, DType::kF32), Tensor::Zeros({10, 8}, DType::kF32),
                            Tensor::Zeros({4}, DType::kI32), &loss_saved),
               "VocabParallelCrossEntropy: labels must be i32\\[3\\] on cpu, got i32\\[4\\]");
}

}  // namespace
}  // namespace moe
