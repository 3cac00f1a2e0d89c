// Helpers shared by the fp8 GPU tests (core/ops/fp8_cuda_test.cc, fp8_fused_cuda_test.cc): fresh
// seeds, bf16 inputs drawn on the CPU, raw fp8 bytes, the host reference of current scaling
// (amax, scale, f32_to_fp8 of x * scale) and a relative error measure that prints what it
// measured. Test binaries built with KILN_WITH_CUDA only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "core/ops/elementwise.h"
#include "core/ops/fp8.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/tensor.h"

namespace kiln::fp8_test {

#define KILN_REQUIRE_FP8()                                                                 \
  do {                                                                                     \
    if (cuda::compute_capability() < 89) KILN_GPU_SKIP("fp8 GEMMs need compute cap 8.9+"); \
  } while (0)

inline const Device kGpu = Device::cuda(0);

inline uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// normal(0, std) rounded to dtype, on the CPU.
inline Tensor rand_cpu(const Shape& shape, double std, DType dtype, Generator& gen) {
  return randn(shape, gen, DType::kF64, Device::cpu(), 0.0, std).to(dtype);
}

// The raw bytes of a (CPU or CUDA) fp8 tensor.
inline std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor h = t.to(Device::cpu()).contiguous();
  const uint8_t* p = h.data<uint8_t>();
  return std::vector<uint8_t>(p, p + h.numel());
}

inline Tensor f64(const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64).detach(); }

// The message of the kiln::Error f throws ("" when it throws none).
template <typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- host reference of the recipe ----

struct HostQuant {
  float amax = 0, scale = 1, descale = 1;
  std::vector<uint8_t> q;  // row-major, like x
};

inline float host_scale(float amax, DType t) {
  if (amax == 0.0f) return 1.0f;
  const float s = static_cast<float>(fp8_max(t)) / amax;
  return std::isinf(s) ? FLT_MAX : s;
}

inline HostQuant host_quantize(const Tensor& x, DType t) {
  const std::vector<double> v = x.to_vector();  // exact: bf16 / f16 / f32 values
  HostQuant h;
  for (double d : v) h.amax = std::max(h.amax, std::fabs(static_cast<float>(d)));
  h.scale = host_scale(h.amax, t);
  h.descale = 1.0f / h.scale;
  h.q.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) h.q[i] = f32_to_fp8(static_cast<float>(v[i]) * h.scale, t);
  return h;
}

// (rows, cols) f64 tensor of the dequantized values fp8_to_f32(q) (without the descale).
inline Tensor host_fp8_values(const std::vector<uint8_t>& q, int64_t rows, int64_t cols, DType t) {
  std::vector<double> v(q.size());
  for (size_t i = 0; i < q.size(); ++i) v[i] = fp8_to_f32(q[i], t);
  return Tensor::from_vector(v, {rows, cols}, DType::kF64);
}

// Host-dequantized product (f64): (fp8(a) descale_a) (fp8(b) descale_b)^T, from the host
// quantization of a (m, k) and b (n, k) (both CPU tensors).
inline Tensor dequant_product(const Tensor& a, DType ta, const Tensor& b, DType tb) {
  const HostQuant qa = host_quantize(a, ta), qb = host_quantize(b, tb);
  Tensor va = host_fp8_values(qa.q, a.size(0), a.size(1), ta);
  Tensor vb = host_fp8_values(qb.q, b.size(0), b.size(1), tb);
  return scale(matmul(va, vb, false, true),
               static_cast<double>(qa.descale) * static_cast<double>(qb.descale));
}

// ---- error measures ----

struct Err {
  double rel_fro = 0;  // ||got - ref|| / ||ref||
  double max_abs = 0;  // max |got - ref|
  double ref_max = 0;  // max |ref|
};

inline Err error_of(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(got.shape(), ref.shape());
  const std::vector<double> a = got.to_vector(), b = ref.to_vector();
  double num = 0, den = 0;
  Err e;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
    e.max_abs = std::isnan(d) ? INFINITY : std::max(e.max_abs, std::fabs(d));
    e.ref_max = std::max(e.ref_max, std::fabs(b[i]));
  }
  e.rel_fro = std::isnan(num) ? INFINITY : std::sqrt(num / std::max(den, 1e-300));
  return e;
}

inline void report(const char* what, const Err& e, double tol) {
  std::printf("  %-34s ||err||/||ref|| = %.3e (tol %.1e), max |err| = %.3e of max |ref| %.3e\n",
              what, e.rel_fro, tol, e.max_abs, e.ref_max);
  EXPECT_LE(e.rel_fro, tol) << what;
}

}  // namespace kiln::fp8_test
