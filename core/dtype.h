// Element types and devices: the enums, their sizes and names, and the scalar conversions between
// f32 and the 16- and 8-bit float formats (round to nearest even), shared by CPU and CUDA code.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

namespace kiln {

enum class DType : uint8_t { kF32, kF64, kBF16, kF16, kF8E4M3, kF8E5M2, kI32, kI64, kU16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool is_floating(DType t);
std::ostream& operator<<(std::ostream& os, DType t);

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;
  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
  static Device cpu() { return {DeviceType::kCPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::kCUDA, i}; }
};
std::ostream& operator<<(std::ostream& os, const Device& d);

// ---- scalar conversions (host versions; the CUDA kernels use cuda_bf16/cuda_fp16 intrinsics) ----

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint8_t f32_to_fp8(float f, DType t);  // t is kF8E4M3 (saturating, max 448) or kF8E5M2
float fp8_to_f32(uint8_t v, DType t);

// Rounds a value through a dtype and back (identity for f32/f64): what storing it would keep.
double round_to(double v, DType t);

}  // namespace kiln
