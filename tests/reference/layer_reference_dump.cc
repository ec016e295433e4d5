// Runs every core layer forward and backward in fp32 on random inputs and
// writes, per layer, one safetensors file with the inputs, parameters, the
// upstream gradient, our outputs and our gradients. check_layers.py recomputes
// all of it with PyTorch on the CPU and compares.
//
//   layer_reference_dump OUT_DIR
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/io/safetensors.h"
#include "core/layers/attention.h"
#include "core/layers/cross_entropy.h"
#include "core/layers/embedding.h"
#include "core/layers/linear.h"
#include "core/layers/rmsnorm.h"
#include "core/layers/rope.h"
#include "core/layers/swiglu.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomIds;
using testing::RandomTensor;
using Entries = std::vector<std::pair<std::string, Tensor>>;

constexpr DType kF32 = DType::kF32;

void Write(const std::string& dir, const std::string& layer, const Entries& entries) {
  testing::WriteSafetensorsOrDie(dir + "/" + layer + ".safetensors", entries);
}

void DumpLinear(const std::string& dir) {
  Linear linear("linear", 48, 40);
  linear.weight().value.CopyFrom(RandomTensor({40, 48}, kF32, 11, 0.2));
  const Tensor x = RandomTensor({2, 7, 48}, kF32, 12);
  Linear::Saved saved;
  const Tensor y = linear.Forward(x, &saved);
  const Tensor dy = RandomTensor(y.shape(), kF32, 13);
  const Tensor dx = linear.Backward(dy, saved);
  Write(dir, "linear",
        {{"x", x},
         {"weight", linear.weight().value},
         {"y", y},
         {"dy", dy},
         {"dx", dx},
         {"dweight", linear.weight().grad}});
}

void DumpEmbedding(const std::string& dir) {
  Embedding embedding("embed", 50, 24);
  embedding.weight().value.CopyFrom(RandomTensor({50, 24}, kF32, 21));
  const Tensor ids = RandomIds({3, 20}, 50, 22);  // 60 draws from 50 rows: repeats
  Embedding::Saved saved;
  const Tensor y = embedding.Forward(ids, &saved);
  const Tensor dy = RandomTensor(y.shape(), kF32, 23);
  embedding.Backward(dy, saved);
  Write(dir, "embedding",
        {{"ids", ids},
         {"weight", embedding.weight().value},
         {"y", y},
         {"dy", dy},
         {"dweight", embedding.weight().grad}});
}

void DumpRmsNorm(const std::string& dir) {
  RmsNorm norm("norm", 64, 1e-5);
  norm.weight().value.CopyFrom(RandomTensor({64}, kF32, 31));
  const Tensor x = RandomTensor({2, 9, 64}, kF32, 32, 3.0);
  RmsNorm::Saved saved;
  const Tensor y = norm.Forward(x, &saved);
  const Tensor dy = RandomTensor(y.shape(), kF32, 33);
  const Tensor dx = norm.Backward(dy, saved);
  Write(dir, "rmsnorm",
        {{"x", x},
         {"weight", norm.weight().value},
         {"y", y},
         {"dy", dy},
         {"dx", dx},
         {"dweight", norm.weight().grad}});
}

void DumpRope(const std::string& dir) {
  const int64_t offset = 5;
  Rope rope(/*head_dim=*/16, /*max_positions=*/64, /*theta=*/10000.0);
  const Tensor x = RandomTensor({2, 12, 3, 16}, kF32, 41);
  const Tensor y = rope.Forward(x, offset);
  const Tensor dy = RandomTensor(y.shape(), kF32, 42);
  const Tensor dx = rope.Backward(dy, offset);
  Write(dir, "rope",
        {{"x", x},
         {"y", y},
         {"dy", dy},
         {"dx", dx},
         {"pos_offset", testing::ScalarTensor(offset, DType::kI64)},
         {"theta", testing::ScalarTensor(10000.0, DType::kF64)}});
}

void DumpSwiglu(const std::string& dir) {
  const Swiglu swiglu;
  const Tensor gate = RandomTensor({6, 32}, kF32, 51, 2.0);
  const Tensor up = RandomTensor({6, 32}, kF32, 52);
  Swiglu::Saved saved;
  const Tensor y = swiglu.Forward(gate, up, &saved);
  const Tensor dy = RandomTensor(y.shape(), kF32, 53);
  const Swiglu::Grads grads = swiglu.Backward(dy, saved);
  Write(dir, "swiglu",
        {{"gate", gate},
         {"up", up},
         {"y", y},
         {"dy", dy},
         {"dgate", grads.dgate},
         {"dup", grads.dup}});
}

void DumpAttention(const std::string& dir) {
  // GQA with 2 query heads per kv head; seq 37 spans several 16-blocks.
  const Attention attention(/*q_heads=*/4, /*kv_heads=*/2, /*head_dim=*/16, /*block=*/16);
  const Tensor q = RandomTensor({2, 37, 4, 16}, kF32, 61);
  const Tensor k = RandomTensor({2, 37, 2, 16}, kF32, 62);
  const Tensor v = RandomTensor({2, 37, 2, 16}, kF32, 63);
  Attention::Saved saved;
  const Tensor y = attention.Forward(q, k, v, &saved);
  const Tensor dy = RandomTensor(y.shape(), kF32, 64);
  const Attention::Grads grads = attention.Backward(dy, saved);
  Write(dir, "attention",
        {{"q", q},
         {"k", k},
         {"v", v},
         {"y", y},
         {"dy", dy},
         {"dq", grads.dq},
         {"dk", grads.dk},
         {"dv", grads.dv}});
}

void DumpCrossEntropy(const std::string& dir) {
  // Vocab 100 in chunks of 32: the last chunk is partial.
  const CrossEntropy cross_entropy(/*vocab_chunk=*/32);
  const Tensor hidden = RandomTensor({20, 24}, kF32, 71);
  const Tensor weight = RandomTensor({100, 24}, kF32, 72, 0.5);
  Tensor labels = RandomIds({20}, 100, 73);
  labels.data<int32_t>()[3] = -100;  // ignored, as Hugging Face marks padding
  CrossEntropy::Saved saved;
  const CrossEntropy::Result result = cross_entropy.Forward(hidden, weight, labels, &saved);
  const double scale = 1.0 / static_cast<double>(result.tokens);
  Tensor dweight = Tensor::Zeros(weight.shape(), kF32);
  const Tensor dhidden = cross_entropy.Backward(scale, weight, saved, &dweight);
  Write(dir, "cross_entropy",
        {{"hidden", hidden},
         {"weight", weight},
         {"labels", labels},
         {"loss_sum", testing::ScalarTensor(result.loss_sum, DType::kF64)},
         {"tokens", testing::ScalarTensor(static_cast<double>(result.tokens), DType::kI64)},
         {"dhidden", dhidden},
         {"dweight", dweight}});
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  moe::DumpLinear(dir);
  moe::DumpEmbedding(dir);
  moe::DumpRmsNorm(dir);
  moe::DumpRope(dir);
  moe::DumpSwiglu(dir);
  moe::DumpAttention(dir);
  moe::DumpCrossEntropy(dir);
  return 0;
}
