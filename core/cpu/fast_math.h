// Vectorisable f32 exp for the CPU reference kernels (cross-entropy, softmax, attention, GELU,
// SiLU). glibc's expf is a call per element and blocks auto-vectorisation; exp_f32 is Cody-Waite
// range reduction plus a degree-6 polynomial, within 2 ulp of expf over the range used (|error|
// < 2.4e-7 relative, checked against std::exp in fast_math_test.cc), exactly 0 below -87.3 (so
// masked scores of -inf give 0) and +inf above 88.7. f64 kernels keep std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kiln::cpu {

inline float exp_f32(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // Round to nearest by adding and subtracting 1.5 * 2^23 (pure arithmetic: vectorises, unlike
  // a call to floorf on baseline x86-64).
  const float kMagic = 12582912.0f;
  const float k = (xc * kLog2e + kMagic) - kMagic;
  const float r = xc - k * kLn2Hi - k * kLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^k as two factors so that k = 128 (x near 88.7) and k = -126 stay representable.
  const int32_t k1 = static_cast<int32_t>(k) >> 1, k2 = static_cast<int32_t>(k) - k1;
  const int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, 4);
  std::memcpy(&s2, &b2, 4);
  const float y = p * s1 * s2;
  return x < -87.3f ? 0.0f : (x > 88.7f ? INFINITY : y);
}

// std::exp for double, exp_f32 for float.
template <typename T>
inline T exp_fast(T x) {
  if constexpr (sizeof(T) == 4) {
    return exp_f32(x);
  } else {
    return std::exp(x);
  }
}

}  // namespace kiln::cpu
