#include "core/layers/parameter.h"

namespace moe {

Parameter::Parameter(std::string name_in, const Shape& shape, DType dtype, Device device)
    : name(std::move(name_in)),
      value(Tensor::Empty(shape, dtype, device)),
      grad(Tensor::Zeros(shape, dtype == DType::kBF16 ? DType::kF32 : dtype, device)),
      slice(ShardSlice::Whole(shape)) {}

void AppendParameters(std::vector<Parameter*>* out, std::initializer_list<Parameter*> params) {
  out->insert(out->end(), params.begin(), params.end());
}

}  // namespace moe
