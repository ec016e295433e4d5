// Runs every router variant in kF64 on random inputs and writes what
// router_family_reference.py needs to recompute it with PyTorch from
// Megatron-Core's rules (and the top-p paper's):
//
//   <variant>.safetensors  the options; x, gate, expert_bias, dweights g and
//                          the other ranks' counts and rows for the global
//                          aux; our logits, ids, weights, the six loss values
//                          and dx, dgate of
//                          <weights, g> + sum_i c_i * loss_i.
//
//   router_family_dump OUT_DIR
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "moe/router.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::RandomTensor;
using testing::ScalarTensor;
constexpr DType kF64 = DType::kF64;

// Coefficients of hf aux, switch aux, seq aux, global aux, z, entropy.
constexpr double kCoef[6] = {0.3, 0.5, 0.7, 0.4, 0.2, 0.6};

Tensor Vector(const std::vector<double>& v) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(v.size())}, kF64);
  for (size_t i = 0; i < v.size(); ++i) t.SetFromDouble(static_cast<int64_t>(i), v[i]);
  return t;
}

void Dump(const std::string& dir, const std::string& name, const RouterOptions& o, uint64_t seed) {
  const int64_t tokens = 24, seq_length = 6, hidden = 10, experts = o.num_experts;
  Router router("gate", hidden, o, kF64);
  router.weight().value.CopyFrom(RandomTensor({experts, hidden}, kF64, seed, 0.5));
  Tensor bias = Tensor::Zeros({experts}, DType::kF32);
  if (o.enable_expert_bias) {
    bias = RandomTensor({experts}, DType::kF32, seed + 1, 0.1);
    router.expert_bias().CopyFrom(bias);
  }
  const Tensor x = RandomTensor({tokens, hidden}, kF64, seed + 2);
  const Tensor g = RandomTensor({tokens, router.width()}, kF64, seed + 3);
  std::vector<double> other_counts(experts);
  for (int64_t e = 0; e < experts; ++e) other_counts[e] = static_cast<double>(3 * e + 1);
  const double other_rows = 40;

  Router::Saved saved;
  const Routing r = router.Forward(x, &saved, seq_length);
  std::vector<double> global_counts = r.stats.choice_counts;
  for (int64_t e = 0; e < experts; ++e) global_counts[e] += other_counts[e];
  const double total_rows = static_cast<double>(tokens) + other_rows;
  const LoadBalancingLoss hf = ComputeLoadBalancingLoss(r.stats, kCoef[0], 1);
  const LoadBalancingLoss sw = ComputeSwitchLoadBalancingLoss(r.stats, kCoef[1], 1);
  const SequenceLoadBalancingLoss seq = ComputeSequenceLoadBalancingLoss(r.seq_stats, kCoef[2], 1);
  const LoadBalancingLoss global =
      ComputeGlobalLoadBalancingLoss(r.stats, global_counts, total_rows, kCoef[3], 1);
  const ZLoss z = ComputeZLoss(r.stats, kCoef[4], 1);
  const EntropyLoss entropy = ComputeEntropyLoss(r.stats, kCoef[5], 1);
  RouterLossGrads grads;
  grads.AddAux(hf.daux_dprob);
  grads.AddAux(sw.daux_dprob);
  grads.AddAux(global.daux_dprob);
  grads.daux_dprob_BE = seq.daux_dprob;
  grads.z_scale = z.z_scale;
  grads.entropy_scale = entropy.entropy_scale;
  const Tensor dx = router.Backward(g, grads, saved);

  testing::WriteSafetensorsOrDie(
      dir + "/" + name + ".safetensors",
      {{"num_experts", ScalarTensor(experts, DType::kI64)},
       {"top_k", ScalarTensor(o.top_k, DType::kI64)},
       {"sigmoid", ScalarTensor(o.score_function == ScoreFunction::kSigmoid, DType::kI64)},
       {"pre_softmax", ScalarTensor(o.pre_softmax, DType::kI64)},
       {"topp", ScalarTensor(o.topp, kF64)},
       {"topp_max_experts", ScalarTensor(o.topp_max_experts, DType::kI64)},
       {"num_groups", ScalarTensor(o.num_groups, DType::kI64)},
       {"group_topk", ScalarTensor(o.group_topk, DType::kI64)},
       {"seq_length", ScalarTensor(seq_length, DType::kI64)},
       {"coefficients", Vector(std::vector<double>(kCoef, kCoef + 6))},
       {"x", x},
       {"gate", router.weight().value},
       {"expert_bias", bias},
       {"g", g},
       {"other_counts", Vector(other_counts)},
       {"other_rows", ScalarTensor(other_rows, kF64)},
       {"logits", r.logits_TE},
       {"ids", r.ids_TK},
       {"weights", r.weights_TK},
       {"losses", Vector({hf.aux, sw.aux, seq.aux, global.aux, z.z, entropy.entropy})},
       {"dx", dx},
       {"dgate", router.weight().grad}});
}

RouterOptions Options(int64_t top_k, ScoreFunction f = ScoreFunction::kSoftmax) {
  RouterOptions o;
  o.num_experts = 8;
  o.top_k = top_k;
  o.score_function = f;
  return o;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  using moe::Options;
  using moe::ScoreFunction;
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  moe::Dump(dir, "mixtral", Options(2), 10);
  moe::RouterOptions o = Options(3);
  o.pre_softmax = true;
  moe::Dump(dir, "pre_softmax", o, 20);
  moe::Dump(dir, "sigmoid", Options(3, ScoreFunction::kSigmoid), 30);
  moe::Dump(dir, "sigmoid_top1", Options(1, ScoreFunction::kSigmoid), 40);
  o = Options(4);
  o.num_groups = 4;
  o.group_topk = 2;
  moe::Dump(dir, "group_limited", o, 50);
  o = Options(4, ScoreFunction::kSigmoid);
  o.num_groups = 4;
  o.group_topk = 2;
  o.enable_expert_bias = true;
  moe::Dump(dir, "group_limited_sigmoid_bias", o, 60);
  o = Options(2);
  o.topp = 0.6;
  moe::Dump(dir, "topp", o, 70);
  o.topp_max_experts = 3;
  moe::Dump(dir, "topp_capped", o, 80);
  return 0;
}
