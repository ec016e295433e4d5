// The whole MoE layer (router, capacity, dispatcher, experts, shared expert)
// over expert-parallel and expert-tensor-parallel groups under mpirun (1, 2,
// 4 ranks), against the single-rank layer every rank runs on its own
// tokens: y and dx per rank, and every weight gradient summed over the
// ranks that hold the same weights (EDP) against the reference's summed
// over all ranks, in f64 (1e-12: only the summation order differs).
//
// Rank r of a layout (EP, ETP) has etp rank r % ETP, ep rank (r / ETP) % EP
// and edp rank r / (ETP EP): Megatron-Core's expert grid order.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "moe/moe_layer.h"
#include "tests/parallel/mpi_test_env.h"
#include "tests/test_util.h"

namespace moe {
namespace {

using testing::MaxRelativeError;
using testing::RandomTensor;
using testing::World;

constexpr double kTol = 1e-12;

struct Layout {
  int ep, etp;
  DispatcherType dispatcher;
  double capacity_factor;
  int64_t shared;
};

Tensor Slice2d(const Tensor& whole, const ShardSlice& slice, const Shape& shape) {
  Tensor out = Tensor::Empty(shape, whole.dtype());
  const int64_t cols = whole.dim(1);
  for (int64_t i = 0; i < shape[0]; ++i) {
    for (int64_t j = 0; j < shape[1]; ++j) {
      out.data<double>()[i * shape[1] + j] =
          whole.data<double>()[(slice.offsets[0] + i) * cols + slice.offsets[1] + j];
    }
  }
  return out;
}

void RunLayout(const Layout& l) {
  const int world = World().size(), rank = World().rank();
  if (world % (l.ep * l.etp) != 0) GTEST_SKIP() << "layout does not fit " << world << " ranks";
  SCOPED_TRACE(absl::StrCat("EP ", l.ep, " ETP ", l.etp));
  const int etp_rank = rank % l.etp, ep_rank = (rank / l.etp) % l.ep;
  const int edp_rank = rank / (l.etp * l.ep);
  std::unique_ptr<Communicator> etp = World().Split(ep_rank + l.ep * edp_rank, rank);
  std::unique_ptr<Communicator> ep = World().Split(etp_rank + l.etp * edp_rank, rank);
  std::unique_ptr<Communicator> edp = World().Split(rank % (l.etp * l.ep), rank);

  MoeOptions o{.hidden_size = 6, .intermediate_size = 8, .num_experts = 4, .top_k = 2};
  o.dispatcher = l.dispatcher;
  o.capacity_factor = l.capacity_factor;
  o.shared_expert_intermediate_size = l.shared;
  MoeLayer ref("moe", o, DType::kF64);
  MoeLayer mine("moe", o, DType::kF64, Device::kCpu, ep.get(), etp.get());
  // Whole weights keyed by name; each rank copies its slice.
  uint64_t seed = 50;
  for (Parameter* p : ref.Parameters()) {
    p->value.CopyFrom(RandomTensor(p->value.shape(), DType::kF64, seed++, 0.5));
  }
  auto find = [&](const std::string& name) -> Parameter* {
    for (Parameter* p : ref.Parameters()) {
      if (p->name == name) return p;
    }
    return nullptr;
  };
  for (Parameter* p : mine.Parameters()) {
    Parameter* whole = find(p->name);
    ASSERT_NE(whole, nullptr) << p->name;
    p->value.CopyFrom(p->slice.global_shape.empty() || p->value.shape() == whole->value.shape()
                          ? whole->value
                          : Slice2d(whole->value, p->slice, p->value.shape()));
  }
  const Tensor x = RandomTensor({2, 5, 6}, DType::kF64, 700 + rank);
  const Tensor dy = RandomTensor({2, 5, 6}, DType::kF64, 800 + rank);
  MoeLayer::Saved ref_saved, my_saved;
  const MoeLayer::Output ref_out = ref.Forward(x, &ref_saved);
  const MoeLayer::Output my_out = mine.Forward(x, &my_saved);
  EXPECT_LE(MaxRelativeError(my_out.y, ref_out.y), kTol);
  const Tensor ref_dx = ref.Backward(dy, std::vector<double>{}, 0.0, ref_saved);
  const Tensor my_dx = mine.Backward(dy, std::vector<double>{}, 0.0, my_saved);
  EXPECT_LE(MaxRelativeError(my_dx, ref_dx), kTol);
  // Gradients: the reference's summed over every rank (the same parameter
  // list everywhere, so the all-reduces pair up); each rank's summed over
  // its replicas (EDP for experts, everyone for the rest).
  std::map<std::string, Tensor> totals;
  for (Parameter* p : ref.Parameters()) {
    Tensor total = p->grad.Clone();
    World().AllReduceSync(total, ReduceOp::kSum);
    totals[p->name] = total;
  }
  for (Parameter* p : mine.Parameters()) {
    Parameter* whole = find(p->name);
    const Tensor& total = totals[p->name];
    Tensor summed = p->grad.Clone();
    const bool expert = p->name.find(".experts.") != std::string::npos;
    (expert ? edp.get() : static_cast<Communicator*>(&World()))
        ->AllReduceSync(summed, ReduceOp::kSum);
    const Tensor want = p->value.shape() == whole->value.shape()
                            ? total
                            : Slice2d(total, p->slice, p->value.shape());
    EXPECT_LE(MaxRelativeError(summed, want), kTol) << p->name;
  }
}

TEST(MoeLayerParallel, ExpertParallel) {
  RunLayout({World().size(), 1, DispatcherType::kAllToAll, 0, 0});
}
TEST(MoeLayerParallel, ExpertTensorParallel) {
  RunLayout({1, World().size(), DispatcherType::kAllToAll, 0, 0});
}
TEST(MoeLayerParallel, Ep2Etp2WithCapacityAndSharedExpert) {
  RunLayout({2, 2, DispatcherType::kAllToAll, 1.0, 4});
}
TEST(MoeLayerParallel, Etp2AllGather) { RunLayout({1, 2, DispatcherType::kAllGather, 0, 0}); }
TEST(MoeLayerParallel, Ep2Etp1Edp) { RunLayout({2, 1, DispatcherType::kAllGather, 0.75, 0}); }

}  // namespace
}  // namespace moe
