// Device-side element access for every kiln dtype, converting exactly as the host code in
// core/dtype.{h,cc} does (round to nearest even; fp8 e4m3 saturates to 448, e5m2 to 57344), so a
// CUDA copy or kernel stores the same bits the CPU reference stores. Include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) {
  if (isnan(f)) return static_cast<uint16_t>((__float_as_uint(f) >> 16) & 0x8000u) | 0x7e00;
  return __half_as_ushort(__float2half_rn(f));
}

// Mirrors round_float_format in core/dtype.cc.
__device__ __forceinline__ float round_float_format_dev(float f, int mant, int emin) {
  if (f == 0.0f || !isfinite(f)) return f;
  int e;
  frexpf(f, &e);
  int exp = max(e - 1, emin);
  float quantum = ldexpf(1.0f, exp - mant);
  return rintf(f / quantum) * quantum;
}

// Mirrors f32_to_fp8 in core/dtype.cc.
__device__ __forceinline__ uint8_t f32_to_fp8_bits(float f, bool e4) {
  const int mant_bits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  const float max_v = e4 ? 448.0f : 57344.0f;
  const uint8_t sign = signbit(f) ? 0x80 : 0;
  if (isnan(f)) return e4 ? 0x7f : 0x7e;
  const float a = fabsf(f);
  const float r = round_float_format_dev(fminf(a, max_v * 2), mant_bits, 1 - bias);
  if (r > max_v) return e4 ? (sign | 0x7e) : (sign | 0x7b);
  if (r == 0.0f) return sign;
  int e;
  const float m = frexpf(r, &e);
  const int exp = e - 1;
  if (exp < 1 - bias) {
    return sign | static_cast<uint8_t>(lroundf(ldexpf(r, bias - 1 + mant_bits)));
  }
  const uint8_t mant = static_cast<uint8_t>(lroundf((m * 2.0f - 1.0f) * (1 << mant_bits)));
  return sign | static_cast<uint8_t>((exp + bias) << mant_bits) | mant;
}

// Mirrors fp8_to_f32 in core/dtype.cc.
__device__ __forceinline__ float fp8_bits_to_f32(uint8_t v, bool e4) {
  const int mant_bits = e4 ? 3 : 2, bias = e4 ? 7 : 15;
  const int sign = v >> 7;
  const int exp = (v >> mant_bits) & (e4 ? 0xf : 0x1f);
  const int mant = v & ((1 << mant_bits) - 1);
  float r;
  if (e4 && exp == 0xf && mant == 0x7) {
    r = __int_as_float(0x7fc00000);
  } else if (!e4 && exp == 0x1f) {
    r = mant ? __int_as_float(0x7fc00000) : __int_as_float(0x7f800000);
  } else if (exp == 0) {
    r = ldexpf(static_cast<float>(mant), 1 - bias - mant_bits);
  } else {
    r = ldexpf(static_cast<float>(mant + (1 << mant_bits)), exp - bias - mant_bits);
  }
  return sign ? -r : r;
}

// Element i of `base` (dtype t) as a double, exactly as cpu::load does.
__device__ __forceinline__ double load_as_double(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(base)[i];
    case DType::kF64:
      return static_cast<const double*>(base)[i];
    case DType::kBF16:
      return bf16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF16:
      return f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF8E4M3:
      return fp8_bits_to_f32(static_cast<const uint8_t*>(base)[i], true);
    case DType::kF8E5M2:
      return fp8_bits_to_f32(static_cast<const uint8_t*>(base)[i], false);
    case DType::kI32:
      return static_cast<const int32_t*>(base)[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::kU16:
      return static_cast<const uint16_t*>(base)[i];
  }
  return 0;
}

// Stores v into element i of `base` (dtype t), exactly as cpu::store does.
__device__ __forceinline__ void store_from_double(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      break;
    case DType::kF64:
      static_cast<double*>(base)[i] = v;
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16_bits(static_cast<float>(v));
      break;
    case DType::kF16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16_bits(static_cast<float>(v));
      break;
    case DType::kF8E4M3:
      static_cast<uint8_t*>(base)[i] = f32_to_fp8_bits(static_cast<float>(v), true);
      break;
    case DType::kF8E5M2:
      static_cast<uint8_t*>(base)[i] = f32_to_fp8_bits(static_cast<float>(v), false);
      break;
    case DType::kI32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      break;
    case DType::kI64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      break;
    case DType::kU16:
      static_cast<uint16_t*>(base)[i] = static_cast<uint16_t>(v);
      break;
  }
}

// Compute-type access for the float kernels: f32 for f32 / bf16 / f16 storage, f64 for f64.
// Storage types: float, double, __nv_bfloat16 (bf16), __half (f16).
template <typename S>
struct Elem;
template <>
struct Elem<float> {
  using C = float;
  __device__ __forceinline__ static float load(const float* p, int64_t i) { return p[i]; }
  __device__ __forceinline__ static void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Elem<double> {
  using C = double;
  __device__ __forceinline__ static double load(const double* p, int64_t i) { return p[i]; }
  __device__ __forceinline__ static void store(double* p, int64_t i, double v) { p[i] = v; }
};
template <>
struct Elem<__nv_bfloat16> {
  using C = float;
  __device__ __forceinline__ static float load(const __nv_bfloat16* p, int64_t i) {
    return bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
  }
  __device__ __forceinline__ static void store(__nv_bfloat16* p, int64_t i, float v) {
    reinterpret_cast<uint16_t*>(p)[i] = f32_to_bf16_bits(v);
  }
};
template <>
struct Elem<__half> {
  using C = float;
  __device__ __forceinline__ static float load(const __half* p, int64_t i) {
    return f16_bits_to_f32(reinterpret_cast<const uint16_t*>(p)[i]);
  }
  __device__ __forceinline__ static void store(__half* p, int64_t i, float v) {
    reinterpret_cast<uint16_t*>(p)[i] = f32_to_f16_bits(v);
  }
};

}  // namespace kiln::cuda

// Dispatches a kernel body on the four float storage types; S names the storage type.
#define KILN_CUDA_DISPATCH_STORAGE(dtype, S, ...)                                       \
  do {                                                                                  \
    switch (dtype) {                                                                    \
      case ::kiln::DType::kF32: {                                                       \
        using S = float;                                                                \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      case ::kiln::DType::kF64: {                                                       \
        using S = double;                                                               \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      case ::kiln::DType::kBF16: {                                                      \
        using S = __nv_bfloat16;                                                        \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      case ::kiln::DType::kF16: {                                                       \
        using S = __half;                                                               \
        __VA_ARGS__;                                                                    \
        break;                                                                          \
      }                                                                                 \
      default:                                                                          \
        KILN_CHECK(false) << "internal: CUDA float kernel called on dtype " << (dtype); \
    }                                                                                   \
  } while (0)
