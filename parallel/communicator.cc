#include "parallel/communicator.h"

namespace moe {

std::string_view ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
  }
  return "?";
}

void CheckCommTensor(const Tensor& t, const std::string& who, const char* role) {
  MOE_CHECK(t.defined()) << who << ": " << role << " tensor is undefined";
  MOE_CHECK(t.device() == Device::kCpu)
      << who << ": " << role << " is " << t.Describe()
      << "; this communicator moves CPU tensors (CUDA tensors go through the NCCL communicator)";
}

void CheckReducible(const Tensor& t, ReduceOp op, const std::string& who) {
  CheckCommTensor(t, who, "data");
  MOE_CHECK(t.dtype() != DType::kBF16)
      << who << ": cannot reduce (" << ReduceOpName(op) << ") " << t.Describe()
      << "; reduce in f32 (gradients are reduced in their fp32 copies)";
}

void CheckReduceScatterArgs(const Tensor& output, const Tensor& input, int size,
                            const std::string& who) {
  CheckCommTensor(output, who, "output");
  CheckReducible(input, ReduceOp::kSum, who);
  MOE_CHECK(output.dtype() == input.dtype())
      << who << ": output " << output.Describe() << " and input " << input.Describe()
      << " must have the same dtype";
  MOE_CHECK(input.numel() == output.numel() * size)
      << who << ": input " << input.Describe() << " must hold " << size
      << " (the group size) blocks of output's " << output.numel() << " elements";
}

void CheckAllGatherArgs(const Tensor& output, const Tensor& input, int size,
                        const std::string& who) {
  CheckCommTensor(output, who, "output");
  CheckCommTensor(input, who, "input");
  MOE_CHECK(output.dtype() == input.dtype())
      << who << ": output " << output.Describe() << " and input " << input.Describe()
      << " must have the same dtype";
  MOE_CHECK(output.numel() == input.numel() * size)
      << who << ": output " << output.Describe() << " must hold " << size
      << " (the group size) blocks of input's " << input.numel() << " elements";
}

int64_t CheckAllToAllVArgs(const Tensor& input, const std::vector<int64_t>& send_counts, int size,
                           const std::string& who) {
  CheckCommTensor(input, who, "input");
  MOE_CHECK(input.ndim() >= 1) << who << ": input " << input.Describe()
                               << " must have a row dimension (at least 1-D)";
  MOE_CHECK(static_cast<int>(send_counts.size()) == size)
      << who << ": " << send_counts.size() << " send counts for a group of " << size
      << " ranks; give one count per rank";
  int64_t total = 0;
  for (size_t p = 0; p < send_counts.size(); ++p) {
    MOE_CHECK(send_counts[p] >= 0)
        << who << ": send_counts[" << p << "] = " << send_counts[p] << " is negative";
    total += send_counts[p];
  }
  MOE_CHECK(total == input.dim(0)) << who << ": send counts sum to " << total << " rows but input "
                                   << input.Describe() << " has " << input.dim(0);
  return NumElements(Shape(input.shape().begin() + 1, input.shape().end()));
}

HandlePtr Communicator::AllToAllV(Tensor* output, std::vector<int64_t>* recv_counts,
                                  const Tensor& input, const std::vector<int64_t>& send_counts,
                                  const Tensor& workspace) {
  const std::string who = name() + " AllToAllV";
  const int64_t row = CheckAllToAllVArgs(input, send_counts, size(), who);
  MOE_CHECK(output != nullptr && recv_counts != nullptr)
      << who << ": output and recv_counts must not be null";
  if (workspace.defined()) {
    MOE_CHECK(workspace.dtype() == input.dtype() && workspace.device() == input.device())
        << who << ": workspace " << workspace.Describe() << " must have the dtype and device of "
        << "input " << input.Describe();
  }
  return DoAllToAllV(output, recv_counts, input, send_counts, row, workspace);
}

Tensor OutputIn(const Tensor& workspace, const Shape& shape, DType dtype) {
  if (workspace.defined() && workspace.numel() >= NumElements(shape)) {
    return workspace.View(0, shape);
  }
  return Tensor::Empty(shape, dtype);
}

void CheckPeer(int peer, int size, const std::string& who) {
  MOE_CHECK(peer >= 0 && peer < size)
      << who << ": peer " << peer << " is outside the group of " << size << " ranks";
}

}  // namespace moe
