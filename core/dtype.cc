// dtype tables and the f16 / fp8 conversions (bf16 is inline in the header).
#include "core/dtype.h"

#include <cmath>

#include "core/check.h"

namespace kiln {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF64:
      return 8;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
      return 1;
    case DType::kF8E5M2:
      return 1;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
    case DType::kU16:
      return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF64:
      return "f64";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kF8E4M3:
      return "fp8e4m3";
    case DType::kF8E5M2:
      return "fp8e5m2";
    case DType::kI32:
      return "i32";
    case DType::kI64:
      return "i64";
    case DType::kU16:
      return "u16";
  }
  return "?";
}

bool is_floating(DType t) {
  return t == DType::kF32 || t == DType::kF64 || t == DType::kBF16 || t == DType::kF16 ||
         t == DType::kF8E4M3 || t == DType::kF8E5M2;
}

std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}
std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

namespace {

// Rounds |f| (finite) to a float format with `mant` mantissa bits and minimum normal exponent
// `emin`, round-to-nearest-even, including subnormals. Returns the rounded value as a float.
float round_float_format(float f, int mant, int emin) {
  if (f == 0.0f || !std::isfinite(f)) return f;
  int e;
  std::frexp(f, &e);  // f = m * 2^e, 0.5 <= |m| < 1
  int exp = std::max(e - 1, emin);
  float quantum = std::ldexp(1.0f, exp - mant);
  return std::nearbyint(f / quantum) * quantum;  // default rounding mode: nearest even
}

}  // namespace

uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  if (std::isnan(f)) return sign | 0x7e00;
  float a = std::fabs(f);
  float r = round_float_format(a, 10, -14);
  if (r >= 65520.0f || std::isinf(a)) return sign | 0x7c00;
  if (r == 0.0f) return sign;
  int e;
  float m = std::frexp(r, &e);  // r = m*2^e
  int exp = e - 1;
  if (exp < -14) {  // subnormal: r = k * 2^-24
    return sign | static_cast<uint16_t>(std::lround(std::ldexp(r, 24)));
  }
  uint16_t mant = static_cast<uint16_t>(std::lround((m * 2.0f - 1.0f) * 1024.0f));
  return sign | static_cast<uint16_t>((exp + 15) << 10) | mant;
}

float f16_to_f32(uint16_t h) {
  int sign = (h >> 15) & 1;
  int exp = (h >> 10) & 0x1f;
  int mant = h & 0x3ff;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant + 1024), exp - 25);
  }
  return sign ? -v : v;
}

uint8_t f32_to_fp8(float f, DType t) {
  KILN_CHECK(t == DType::kF8E4M3 || t == DType::kF8E5M2) << "not an fp8 dtype: " << t;
  const bool e4 = t == DType::kF8E4M3;
  const int mant_bits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  const float max_v = e4 ? 448.0f : 57344.0f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) return e4 ? 0x7f : 0x7e;
  float a = std::fabs(f);
  float r = round_float_format(std::min(a, max_v * 2), mant_bits, 1 - bias);
  if (r > max_v) return e4 ? (sign | 0x7e) : (sign | 0x7b);  // saturate (e4m3 has no inf)
  if (r == 0.0f) return sign;
  int e;
  float m = std::frexp(r, &e);
  int exp = e - 1;
  if (exp < 1 - bias) {
    return sign | static_cast<uint8_t>(std::lround(std::ldexp(r, bias - 1 + mant_bits)));
  }
  uint8_t mant = static_cast<uint8_t>(std::lround((m * 2.0f - 1.0f) * (1 << mant_bits)));
  return sign | static_cast<uint8_t>((exp + bias) << mant_bits) | mant;
}

float fp8_to_f32(uint8_t v, DType t) {
  const bool e4 = t == DType::kF8E4M3;
  const int mant_bits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  int sign = v >> 7;
  int exp = (v >> mant_bits) & (e4 ? 0xf : 0x1f);
  int mant = v & ((1 << mant_bits) - 1);
  float r;
  if (e4 && exp == 0xf && mant == 0x7) {
    r = NAN;
  } else if (!e4 && exp == 0x1f) {
    r = mant ? NAN : INFINITY;
  } else if (exp == 0) {
    r = std::ldexp(static_cast<float>(mant), 1 - bias - mant_bits);
  } else {
    r = std::ldexp(static_cast<float>(mant + (1 << mant_bits)), exp - bias - mant_bits);
  }
  return sign ? -r : r;
}

double round_to(double v, DType t) {
  switch (t) {
    case DType::kF64:
      return v;
    case DType::kF32:
      return static_cast<float>(v);
    case DType::kBF16:
      return bf16_to_f32(f32_to_bf16(static_cast<float>(v)));
    case DType::kF16:
      return f16_to_f32(f32_to_f16(static_cast<float>(v)));
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return fp8_to_f32(f32_to_fp8(static_cast<float>(v), t), t);
    default:
      return std::nearbyint(v);
  }
}

}  // namespace kiln
