#include "parallel/tensor_parallel/shard.h"

#include <utility>

namespace moe {
namespace {

class KeepAliveHandle final : public Handle {
 public:
  KeepAliveHandle(HandlePtr inner, std::vector<Tensor> buffers)
      : inner_(std::move(inner)), buffers_(std::move(buffers)) {}
  ~KeepAliveHandle() override { inner_->Wait(); }
  void Wait() override {
    inner_->Wait();
    buffers_.clear();
  }
  bool Test() override {
    if (!inner_->Test()) return false;
    buffers_.clear();
    return true;
  }

 private:
  HandlePtr inner_;
  std::vector<Tensor> buffers_;
};

}  // namespace

Parameter ShardedParameter(std::string name, const Shape& global_shape, int dim, int64_t offset,
                           int64_t size, DType dtype, Device device) {
  MOE_CHECK(dim >= 0 && dim < static_cast<int>(global_shape.size()) && offset >= 0 && size > 0 &&
            offset + size <= global_shape[dim])
      << name << ": slice [" << offset << ", " << offset + size << ") of dimension " << dim
      << " does not fit the whole tensor " << ShapeToString(global_shape);
  Shape shape = global_shape;
  shape[dim] = size;
  Parameter p(std::move(name), shape, dtype, device);
  p.slice.global_shape = global_shape;
  p.slice.offsets[dim] = offset;
  return p;
}

int64_t TpCopies(const Parameter& p, int tp_size) {
  const int64_t global = NumElements(p.slice.global_shape);
  MOE_CHECK(p.value.numel() > 0 && global % p.value.numel() == 0 &&
            (tp_size * p.value.numel()) % global == 0)
      << p.name << ": a shard of " << p.value.numel() << " elements of a whole tensor of " << global
      << " is not an even TP slice for TP size " << tp_size;
  return tp_size * p.value.numel() / global;
}

HandlePtr KeepAlive(HandlePtr inner, std::vector<Tensor> buffers) {
  return std::make_unique<KeepAliveHandle>(std::move(inner), std::move(buffers));
}

}  // namespace moe
