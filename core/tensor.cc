#include "core/tensor.h"

#include <algorithm>
#include <sstream>

#include "core/device_memory.h"

namespace moe {

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    MOE_CHECK(d >= 0) << "negative dimension in shape " << ShapeToString(shape);
    n *= d;
  }
  return n;
}

std::string ShapeToString(const Shape& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

Storage::Storage(Device device, size_t bytes)
    : device_(device), bytes_(bytes), data_(DeviceAllocate(device, bytes)) {}

Storage::~Storage() { DeviceFree(device_, data_); }

Tensor Tensor::Empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  MOE_CHECK(device == Device::kCpu || dtype != DType::kF64)
      << "f64 tensors exist on the CPU only (they serve gradient checks)";
  t.storage_ = std::make_shared<Storage>(device, t.nbytes());
  return t;
}

Tensor Tensor::Zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = Empty(shape, dtype, device);
  t.SetZero();
  return t;
}

Tensor Tensor::FromVector(const Shape& shape, const std::vector<float>& values, DType dtype) {
  MOE_CHECK(NumElements(shape) == static_cast<int64_t>(values.size()))
      << "FromVector: shape " << ShapeToString(shape) << " needs " << NumElements(shape)
      << " values, got " << values.size();
  Tensor t = Empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) t.SetFromDouble(static_cast<int64_t>(i), values[i]);
  return t;
}

int64_t Tensor::dim(int i) const {
  const int n = ndim();
  const int index = i < 0 ? i + n : i;
  MOE_CHECK(index >= 0 && index < n) << "dimension " << i << " out of range for " << Describe();
  return shape_[index];
}

std::string Tensor::Describe() const {
  std::ostringstream out;
  out << DTypeName(dtype_) << ShapeToString(shape_) << " on " << DeviceName(device_);
  return out.str();
}

void* Tensor::raw_data() const {
  if (storage_ == nullptr || storage_->data() == nullptr) return nullptr;
  return static_cast<char*>(storage_->data()) + offset_bytes_;
}

Tensor Tensor::Reshape(const Shape& shape) const {
  MOE_CHECK(NumElements(shape) == numel())
      << "cannot reshape " << Describe() << " to " << ShapeToString(shape);
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::Slice(int64_t begin, int64_t end) const {
  MOE_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0])
      << "slice [" << begin << ", " << end << ") out of range for " << Describe();
  Shape shape = shape_;
  shape[0] = end - begin;
  return View(begin * (numel() / std::max<int64_t>(shape_[0], 1)), shape);
}

Tensor Tensor::View(int64_t element_offset, const Shape& shape) const {
  MOE_CHECK(element_offset >= 0 && element_offset + NumElements(shape) <= numel())
      << "view of " << ShapeToString(shape) << " at offset " << element_offset
      << " does not fit in " << Describe();
  Tensor t = *this;
  t.shape_ = shape;
  t.offset_bytes_ = offset_bytes_ + static_cast<size_t>(element_offset) * DTypeSize(dtype_);
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t = Empty(shape_, dtype_, device_);
  t.CopyFrom(*this);
  return t;
}

Tensor Tensor::To(Device device) const {
  Tensor t = Empty(shape_, dtype_, device);
  t.CopyFrom(*this);
  return t;
}

Tensor Tensor::Cast(DType dtype) const {
  MOE_CHECK(device_ == Device::kCpu) << "Cast runs on the CPU; got " << Describe();
  if (dtype == dtype_) return Clone();
  Tensor t = Empty(shape_, dtype);
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) t.SetFromDouble(i, GetAsDouble(i));
  return t;
}

void Tensor::CopyFrom(const Tensor& src) {
  MOE_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_)
      << "CopyFrom: destination " << Describe() << ", source " << src.Describe();
  DeviceCopy(raw_data(), device_, src.raw_data(), src.device_, nbytes());
}

void Tensor::SetZero() { DeviceZero(device_, raw_data(), nbytes()); }

double Tensor::GetAsDouble(int64_t i) const {
  MOE_CHECK(device_ == Device::kCpu && i >= 0 && i < numel())
      << "GetAsDouble(" << i << ") on " << Describe();
  switch (dtype_) {
    case DType::kF32:
      return static_cast<const float*>(raw_data())[i];
    case DType::kF64:
      return static_cast<const double*>(raw_data())[i];
    case DType::kBF16:
      return BFloat16::ToFloat(static_cast<const uint16_t*>(raw_data())[i]);
    case DType::kI32:
      return static_cast<const int32_t*>(raw_data())[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(raw_data())[i]);
  }
  return 0;
}

void Tensor::SetFromDouble(int64_t i, double value) {
  MOE_CHECK(device_ == Device::kCpu && i >= 0 && i < numel())
      << "SetFromDouble(" << i << ") on " << Describe();
  switch (dtype_) {
    case DType::kF32:
      static_cast<float*>(raw_data())[i] = static_cast<float>(value);
      break;
    case DType::kF64:
      static_cast<double*>(raw_data())[i] = value;
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(raw_data())[i] = BFloat16::FromFloat(static_cast<float>(value));
      break;
    case DType::kI32:
      static_cast<int32_t*>(raw_data())[i] = static_cast<int32_t>(value);
      break;
    case DType::kI64:
      static_cast<int64_t*>(raw_data())[i] = static_cast<int64_t>(value);
      break;
  }
}

std::vector<float> Tensor::ToFloatVector() const {
  const Tensor cpu = device_ == Device::kCpu ? *this : To(Device::kCpu);
  std::vector<float> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = cpu.GetAsDouble(i);
  return out;
}

}  // namespace moe
