// Element types and devices of a Tensor.
#ifndef MOE_CORE_DTYPE_H_
#define MOE_CORE_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <string_view>

namespace moe {

// kF64 exists on the CPU only, so that gradient checks can run every layer in
// double precision; training runs in kF32 (CPU) or kBF16 with fp32 masters
// (CUDA). Integer types hold token ids and labels.
enum class DType : uint8_t { kF32, kBF16, kF64, kI32, kI64 };

enum class Device : uint8_t { kCpu, kCuda };

size_t DTypeSize(DType dtype);
std::string_view DTypeName(DType dtype);     // "f32", "bf16", ...
std::string_view DeviceName(Device device);  // "cpu", "cuda"

// bfloat16 stored as its 16 bits. Conversion from float rounds to nearest even
// (NaN stays NaN), which is what PyTorch and CUDA's __float2bfloat16 do.
struct BFloat16 {
  uint16_t bits = 0;

  BFloat16() = default;
  explicit BFloat16(float value) : bits(FromFloat(value)) {}
  explicit operator float() const { return ToFloat(bits); }

  static uint16_t FromFloat(float value) {
    uint32_t u;
    std::memcpy(&u, &value, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>((u + rounding) >> 16);
  }
  static float ToFloat(uint16_t bits) {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float value;
    std::memcpy(&value, &u, sizeof(value));
    return value;
  }
};

// Maps a C++ element type to its DType, for typed access checks.
template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::kF64;
};
template <>
struct DTypeOf<BFloat16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::kI64;
};

}  // namespace moe

#endif  // MOE_CORE_DTYPE_H_
