// Runs our fp32 MoE block and routers on random inputs and writes what
// moe_block_reference.py needs to recompute them with Hugging Face's
// MixtralSparseMoeBlock and load_balancing_loss_func:
//
//   block.safetensors  one MoeLayer: x, dy, every parameter under its Hugging
//                      Face on-disk name, our y, router_logits, ids, weights,
//                      dx and "grad.<name>" for every parameter.
//   aux.safetensors    two routers ("layers") on different inputs, the
//                      loss c_aux * aux(pooled) + c_z * (z0 + z1): inputs,
//                      gates, logits, aux, z0, z1, dx0, dx1, dgate0, dgate1.
//
//   moe_block_dump OUT_DIR
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "core/io/safetensors.h"
#include "moe/moe_layer.h"
#include "moe/router.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomTensor;
using Entries = std::vector<std::pair<std::string, Tensor>>;

constexpr DType kF32 = DType::kF32;

void Write(const std::string& dir, const std::string& file, const Entries& entries) {
  testing::WriteSafetensorsOrDie(dir + "/" + file + ".safetensors", entries);
}

void DumpBlock(const std::string& dir) {
  const MoeOptions options{
      .hidden_size = 64, .intermediate_size = 96, .num_experts = 8, .top_k = 2};
  MoeLayer layer("model.layers.0.block_sparse_moe", options);
  uint64_t seed = 100;
  for (Parameter* p : layer.Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), kF32, seed++, 0.1));
  }
  layer.router().weight().value.CopyFrom(RandomTensor({8, 64}, kF32, 1, 0.3));
  const Tensor x = RandomTensor({2, 16, 64}, kF32, 2);
  const Tensor dy = RandomTensor({2, 16, 64}, kF32, 3);
  MoeLayer::Saved saved;
  const MoeLayer::Output out = layer.Forward(x, &saved);
  const Tensor dx = layer.Backward(dy, /*daux_dprob_E=*/{}, /*z_scale=*/0, saved);
  Entries entries = {{"hidden_size", testing::ScalarTensor(64, DType::kI64)},
                     {"intermediate_size", testing::ScalarTensor(96, DType::kI64)},
                     {"num_experts", testing::ScalarTensor(8, DType::kI64)},
                     {"top_k", testing::ScalarTensor(2, DType::kI64)},
                     {"x", x},
                     {"dy", dy},
                     {"y", out.y},
                     {"router_logits", out.logits_TE},
                     {"ids", saved.router.ids_TK},
                     {"weights", saved.dispatch.weights_TK},
                     {"dx", dx}};
  for (Parameter* p : layer.Parameters()) {
    entries.push_back({p->name, p->value});
    entries.push_back({"grad." + p->name, p->grad});
  }
  Write(dir, "block", entries);
}

void DumpAux(const std::string& dir) {
  const int64_t hidden = 24, experts = 6, top_k = 3;
  const double c_aux = 0.02, c_z = 0.001;
  Router r0("model.layers.0.block_sparse_moe.gate", hidden, experts, top_k);
  Router r1("model.layers.1.block_sparse_moe.gate", hidden, experts, top_k);
  r0.weight().value.CopyFrom(RandomTensor({experts, hidden}, kF32, 11, 0.4));
  r1.weight().value.CopyFrom(RandomTensor({experts, hidden}, kF32, 12, 0.4));
  const Tensor x0 = RandomTensor({20, hidden}, kF32, 13);
  const Tensor x1 = RandomTensor({12, hidden}, kF32, 14);
  Router::Saved s0, s1;
  const Routing a = r0.Forward(x0, &s0);
  const Routing b = r1.Forward(x1, &s1);
  RouterStats pooled;
  pooled.Add(a.stats);
  pooled.Add(b.stats);
  const LoadBalancingLoss aux = ComputeLoadBalancingLoss(pooled, c_aux, /*loss_scale=*/1);
  const ZLoss z0 = ComputeZLoss(a.stats, c_z, 1);
  const ZLoss z1 = ComputeZLoss(b.stats, c_z, 1);
  // Only the losses: no gradient arrives through the routing weights.
  const Tensor dx0 =
      r0.Backward(Tensor::Zeros(a.weights_TK.shape(), kF32), aux.daux_dprob, z0.z_scale, s0);
  const Tensor dx1 =
      r1.Backward(Tensor::Zeros(b.weights_TK.shape(), kF32), aux.daux_dprob, z1.z_scale, s1);
  Write(dir, "aux",
        {{"num_experts", testing::ScalarTensor(experts, DType::kI64)},
         {"top_k", testing::ScalarTensor(top_k, DType::kI64)},
         {"c_aux", testing::ScalarTensor(c_aux, DType::kF64)},
         {"c_z", testing::ScalarTensor(c_z, DType::kF64)},
         {"x0", x0},
         {"x1", x1},
         {"gate0", r0.weight().value},
         {"gate1", r1.weight().value},
         {"logits0", a.logits_TE},
         {"logits1", b.logits_TE},
         {"aux", testing::ScalarTensor(aux.aux, DType::kF64)},
         {"z0", testing::ScalarTensor(z0.z, DType::kF64)},
         {"z1", testing::ScalarTensor(z1.z, DType::kF64)},
         {"dx0", dx0},
         {"dx1", dx1},
         {"dgate0", r0.weight().grad},
         {"dgate1", r1.weight().grad}});
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  moe::DumpBlock(dir);
  moe::DumpAux(dir);
  return 0;
}
