// CPU element access for any dtype and strided iteration: the building blocks of the reference
// kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/check.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace kiln::cpu {

inline double load(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(base)[i];
    case DType::kF64:
      return static_cast<const double*>(base)[i];
    case DType::kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return fp8_to_f32(static_cast<const uint8_t*>(base)[i], t);
    case DType::kI32:
      return static_cast<const int32_t*>(base)[i];
    case DType::kI64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::kU16:
      return static_cast<const uint16_t*>(base)[i];
  }
  return 0;
}

inline void store(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      break;
    case DType::kF64:
      static_cast<double*>(base)[i] = v;
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(v));
      break;
    case DType::kF16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(v));
      break;
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      static_cast<uint8_t*>(base)[i] = f32_to_fp8(static_cast<float>(v), t);
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

// Calls fn(linear_index, element_offset) for every element of (shape, strides) in row-major order.
template <typename F>
void for_each_offset(const Shape& shape, const Shape& strides, F&& fn) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (nd == 0) {
    fn(0, 0);
    return;
  }
  Shape idx(nd, 0);
  int64_t off = 0;
  const int64_t inner = shape[nd - 1], inner_stride = strides[nd - 1];
  for (int64_t lin = 0; lin < n; lin += inner) {
    for (int64_t j = 0; j < inner; ++j) fn(lin + j, off + j * inner_stride);
    for (int64_t d = nd - 2; d >= 0; --d) {  // advance the outer index
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

// Dispatches a floating kernel body on f32 / f64 (the CPU compute types).
#define KILN_DISPATCH_FLOAT(dtype, T, ...)                                     \
  do {                                                                         \
    if ((dtype) == ::kiln::DType::kF32) {                                      \
      using T = float;                                                         \
      __VA_ARGS__;                                                             \
    } else if ((dtype) == ::kiln::DType::kF64) {                               \
      using T = double;                                                        \
      __VA_ARGS__;                                                             \
    } else {                                                                   \
      KILN_CHECK(false) << "internal: CPU kernel called on dtype " << (dtype); \
    }                                                                          \
  } while (0)

}  // namespace kiln::cpu

namespace kiln::cpu {

// Like for_each_offset, for two strided views of the same shape (stride 0 = broadcast):
// fn(linear_index, offset_a, offset_b).
template <typename F>
void for_each_offset2(const Shape& shape, const Shape& sa, const Shape& sb, F&& fn) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (nd == 0) {
    fn(0, 0, 0);
    return;
  }
  Shape idx(nd, 0);
  int64_t oa = 0, ob = 0;
  const int64_t inner = shape[nd - 1], ia = sa[nd - 1], ib = sb[nd - 1];
  for (int64_t lin = 0; lin < n; lin += inner) {
    for (int64_t j = 0; j < inner; ++j) fn(lin + j, oa + j * ia, ob + j * ib);
    for (int64_t d = nd - 2; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        oa += sa[d];
        ob += sb[d];
        break;
      }
      oa -= sa[d] * (shape[d] - 1);
      ob -= sb[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace kiln::cpu
