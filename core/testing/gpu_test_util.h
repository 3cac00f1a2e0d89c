// Helpers for the CUDA-vs-CPU tests (*_cuda_test.cc, label gpu): skip cleanly without a GPU,
// poison every fresh CUDA allocation with 0xFF bytes (NaN in every float dtype) so an output
// element a kernel forgot to write shows up as NaN, random inputs, and a comparison that reports
// the worst element and treats NaN as a failure. Only for test binaries built with KILN_WITH_CUDA.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/cuda/allocator.h"
#include "core/cuda/runtime.h"
#include "core/random.h"
#include "core/tensor.h"
#include "core/testing/require_gpu.h"

namespace kiln::testing {

// Skips the test when no CUDA device is visible (CI machines without a GPU); fails instead under
// KILN_REQUIRE_GPU=1 (require_gpu.h).
#define KILN_REQUIRE_GPU()                                          \
  do {                                                              \
    if (!::kiln::cuda_available()) KILN_GPU_SKIP("no CUDA device"); \
  } while (0)

// Poisons every CUDA allocation while alive (and synchronises on exit so errors surface here).
class PoisonAllocations {
 public:
  PoisonAllocations() : prev_(cuda::poison_allocations()) { cuda::set_poison_allocations(true); }
  ~PoisonAllocations() { cuda::set_poison_allocations(prev_); }

 private:
  bool prev_;
};

// A fixture for GPU tests: skips without a GPU, poisons allocations, and checks at the end that
// the device reported no asynchronous error.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    KILN_REQUIRE_GPU();
    poison_ = std::make_unique<PoisonAllocations>();
  }
  void TearDown() override {
    poison_.reset();
    if (cuda_available()) {
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << "asynchronous CUDA error";
      EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    }
  }

 private:
  std::unique_ptr<PoisonAllocations> poison_;
};

// normal(0, 1) values (never all zeros) in `dtype` on `device`, from a fixed seed.
inline Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::kF32,
                            Device device = Device::cpu(), double scale = 1.0) {
  Generator g(seed);
  return randn(shape, g, dtype, device, 0.0, scale);
}

struct CloseResult {
  double worst = 0;   // max |a - b| / (atol + rtol * |b|); <= 1 passes; NaN counts as inf
  std::string where;  // the worst element, or the first NaN
  int64_t nan_count = 0;
};

// Compares `got` (any device) with the reference `ref` (same shape) element by element.
inline CloseResult compare(const Tensor& got, const Tensor& ref, double rtol, double atol) {
  CloseResult r;
  EXPECT_EQ(got.shape(), ref.shape());
  if (got.shape() != ref.shape()) {
    r.worst = INFINITY;
    return r;
  }
  const std::vector<double> a = got.to_vector(), b = ref.to_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    double e;
    if (a[i] == b[i]) {
      e = 0.0;  // also equal infinities
    } else if (std::isnan(a[i]) != std::isnan(b[i]) || std::isinf(a[i]) || std::isinf(b[i])) {
      e = INFINITY;
      if (std::isnan(a[i])) ++r.nan_count;
    } else if (std::isnan(a[i])) {
      e = 0.0;  // both NaN: the reference is NaN there too
    } else {
      e = std::fabs(a[i] - b[i]) / (atol + rtol * std::fabs(b[i]));
    }
    if (!(e <= r.worst)) {
      r.worst = e;
      std::ostringstream os;
      os << "element " << i << ": got " << a[i] << ", expected " << b[i];
      r.where = os.str();
    }
  }
  return r;
}

// Mean of |x| (a scale for absolute tolerances where values cross zero).
inline double mean_abs(const Tensor& x) {
  const std::vector<double> v = x.to_vector();
  double s = 0;
  for (double d : v) s += std::fabs(d);
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

#define KILN_EXPECT_CLOSE(got, ref, rtol, atol)                                                   \
  do {                                                                                            \
    const ::kiln::testing::CloseResult kiln_r_ =                                                  \
        ::kiln::testing::compare((got), (ref), (rtol), (atol));                                   \
    EXPECT_LE(kiln_r_.worst, 1.0) << #got << " vs " << #ref << ": " << kiln_r_.where << " (rtol " \
                                  << (rtol) << ", atol " << (atol) << ", " << kiln_r_.nan_count   \
                                  << " NaN)";                                                     \
  } while (0)

// Gives the f32 CUDA leaf p the .grad `current` (copied to p's device), or, when stale, a .grad of
// NaNs marked stale (Tensor::mark_grad_stale): a backward that reads a stale .grad instead of
// writing it over leaves NaNs in it (count_non_finite).
inline void set_grad_or_stale(Tensor p, const Tensor& current, bool stale) {
  p.set_grad(stale ? Tensor::full(p.shape(), std::nan(""), DType::kF32, p.device())
                   : current.to(p.device()));
  if (stale) p.mark_grad_stale();
}

// The elements of t (any device, any float dtype) that are NaN or infinite.
inline int64_t count_non_finite(const Tensor& t) {
  int64_t n = 0;
  for (double v : t.to(Device::cpu()).to(DType::kF64).to_vector()) n += std::isfinite(v) ? 0 : 1;
  return n;
}

// Every element of a and b has the same bits (compares raw bytes on the host).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor ha = Tensor::empty(a.shape(), a.dtype()), hb = Tensor::empty(b.shape(), b.dtype());
  raw::copy(ha, a);
  raw::copy(hb, b);
  return std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

}  // namespace kiln::testing
