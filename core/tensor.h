// Tensor: a dense, contiguous, row-major array with a shape, an element type
// and a device. Copies are shallow (they share storage, as in PyTorch); use
// Clone() for a deep copy. Views share storage with an element offset, so a
// flat parameter buffer can hand out per-parameter tensors.
#ifndef MOE_CORE_TENSOR_H_
#define MOE_CORE_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace moe {

using Shape = std::vector<int64_t>;

int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);  // "[2, 3]"

// Owns one allocation on one device.
class Storage {
 public:
  Storage(Device device, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  Device device_;
  size_t bytes_;
  void* data_;
};

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() is false

  // Uninitialised memory.
  static Tensor Empty(const Shape& shape, DType dtype, Device device = Device::kCpu);
  static Tensor Zeros(const Shape& shape, DType dtype, Device device = Device::kCpu);
  // A CPU tensor holding `values` (converted to `dtype`; kF32, kF64 or kBF16).
  static Tensor FromVector(const Shape& shape, const std::vector<float>& values,
                           DType dtype = DType::kF32);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  // Size of dimension `i`; negative `i` counts from the end.
  int64_t dim(int i) const;
  int64_t numel() const { return NumElements(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  std::string ShapeString() const { return ShapeToString(shape_); }
  std::string Describe() const;  // "f32[2, 3] on cpu"

  void* raw_data() const;
  // Typed pointer; checks that T matches the dtype. Valid for the device the
  // tensor lives on (a CUDA pointer for CUDA tensors).
  template <typename T>
  T* data() const {
    MOE_CHECK(DTypeOf<T>::value == dtype_)
        << "tensor is " << Describe() << ", accessed as " << DTypeName(DTypeOf<T>::value);
    return static_cast<T*>(raw_data());
  }

  // Same storage, new shape with the same number of elements.
  Tensor Reshape(const Shape& shape) const;
  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor Slice(int64_t begin, int64_t end) const;
  // A view of `shape` starting `element_offset` elements into this tensor.
  Tensor View(int64_t element_offset, const Shape& shape) const;

  Tensor Clone() const;
  Tensor To(Device device) const;
  // Converts between floating types (kF32, kF64, kBF16) on the CPU.
  Tensor Cast(DType dtype) const;
  // Copies `src` (same shape and dtype, any device) into this tensor.
  void CopyFrom(const Tensor& src);
  void SetZero();

  // Reads element `i` of a CPU floating tensor as double (tests and tools).
  double GetAsDouble(int64_t i) const;
  void SetFromDouble(int64_t i, double value);
  std::vector<float> ToFloatVector() const;  // CPU copy of every element

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
};

}  // namespace moe

#endif  // MOE_CORE_TENSOR_H_
