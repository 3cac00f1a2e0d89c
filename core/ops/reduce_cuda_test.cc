// CUDA sum / mean against the CPU reference (label gpu; skip without a GPU), on fresh random
// inputs with poisoned (NaN) allocations: every dim of several shapes, keepdim, strided inputs,
// long reductions that take the chunked two-pass path, empty dims, bit-identical repeats, and the
// backward.
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/ops/reduce.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using ReduceCuda = GpuTest;

const Device kGpu = Device::cuda(0);

Tensor to_gpu(const Tensor& t) { return t.to(kGpu).detach(); }

// The GPU accumulates in f64 and rounds once, as the CPU does; the orders differ, so results agree
// to f64 round-off before the final rounding: one rounding of the output dtype (f32: 2^-24
// relative, here 1e-6 for margin; bf16: 2^-8, here 1e-2) plus a tiny absolute term for sums that
// cancel to near zero.
double rtol_for(DType dt) { return dt == DType::kBF16 ? 1e-2 : 1e-6; }

TEST_F(ReduceCuda, SumAndMeanOverEveryDimMatchCpu) {
  const Shape shapes[] = {{7, 300, 5}, {2, 3, 4, 5}, {4097}, {1, 9, 1}, {3000, 1000}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + shape_str(s));
      Tensor x = random_tensor(s, 1, dt);
      Tensor gx = to_gpu(x);
      KILN_EXPECT_CLOSE(sum(gx), sum(x), rtol_for(dt), 1e-9);
      KILN_EXPECT_CLOSE(mean(gx), mean(x), rtol_for(dt), 1e-12);
      for (int64_t d = -static_cast<int64_t>(s.size()); d < static_cast<int64_t>(s.size()); ++d) {
        for (bool keep : {false, true}) {
          Tensor g = sum(gx, d, keep), c = sum(x, d, keep);
          EXPECT_EQ(g.shape(), c.shape());
          KILN_EXPECT_CLOSE(g, c, rtol_for(dt), 1e-9);
          KILN_EXPECT_CLOSE(mean(gx, d, keep), mean(x, d, keep), rtol_for(dt), 1e-12);
        }
      }
    }
  }
}

TEST_F(ReduceCuda, StridedInputsAndLongReductions) {
  Tensor x = random_tensor({64, 3000, 12}, 2);
  Tensor gx = to_gpu(x);
  Tensor xt = x.transpose(0, 2), gxt = gx.transpose(0, 2);  // (12, 3000, 64), strided
  for (int64_t d = 0; d < 3; ++d) KILN_EXPECT_CLOSE(sum(gxt, d), sum(xt, d), 1e-6, 1e-9);
  KILN_EXPECT_CLOSE(sum(gxt), sum(xt), 1e-6, 1e-9);
  // 2^24 + 3 elements: the chunked path with 1024 partial sums added by a second pass.
  Tensor big = random_tensor({(1 << 24) + 3}, 3);
  KILN_EXPECT_CLOSE(sum(to_gpu(big)), sum(big), 1e-6, 1e-9);
  KILN_EXPECT_CLOSE(mean(to_gpu(big)), mean(big), 1e-6, 1e-12);
}

TEST_F(ReduceCuda, RepeatsAreBitIdentical) {
  for (const Shape& s : {Shape{1 << 22}, Shape{4096, 1024}, Shape{50, 20000}}) {
    SCOPED_TRACE(shape_str(s));
    Tensor gx = to_gpu(random_tensor(s, 4));
    EXPECT_TRUE(same_bits(sum(gx), sum(gx)));
    for (int64_t d = 0; d < gx.dim(); ++d) EXPECT_TRUE(same_bits(sum(gx, d), sum(gx, d)));
  }
}

// Sums over the rows of a contiguous (rows, m) matrix with m a multiple of 16 bytes (bias
// gradients: sum_to(gy, {m})) take the 16-byte column kernel (reduce.cu, try_colsum): one chunk
// or many (partials added by a second kernel), the last chunk short, f32 / bf16 / f16, sum and
// mean; a misaligned view and m off the 16-byte grid take the general kernel. Against the CPU,
// and bit-identical on repeat.
TEST_F(ReduceCuda, ColumnSumsOfBiasGradientShapesMatchCpu) {
  const Shape shapes[] = {{4099, 768}, {3, 300, 2304}, {129, 8}, {1000, 3072}, {7, 16}, {2, 3, 40}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + shape_str(s));
      const Tensor x = random_tensor(s, 7, dt);
      const Tensor gx = to_gpu(x);
      const Shape to = {s.back()};
      const double rtol = dt == DType::kF32 ? 1e-6 : 1e-2;
      const Tensor got = sum_to(gx, to);
      // (the CPU's f32 sum_to adds in f32; its f64 sum is the reference)
      KILN_EXPECT_CLOSE(got, sum_to(x.to(DType::kF64), to), rtol, 1e-9);
      EXPECT_TRUE(same_bits(got, sum_to(gx, to)));
      const Tensor flat = x.reshape({-1, s.back()}), gflat = gx.reshape({-1, s.back()});
      KILN_EXPECT_CLOSE(mean(gflat, 0), mean(flat, 0), rtol, 1e-12);
      // one element in: the rows start 2 bytes past a 16-byte boundary (the general kernel)
      const int64_t n = flat.size(0) * s.back();
      const Tensor off = gflat.reshape({n}).narrow(0, 1, n - s.back()).reshape({-1, s.back()});
      KILN_EXPECT_CLOSE(
          sum(off, 0), sum(flat.reshape({n}).narrow(0, 1, n - s.back()).reshape({-1, s.back()}), 0),
          rtol, 1e-9);
    }
  }
}

TEST_F(ReduceCuda, EmptyDims) {
  Tensor x = Tensor::zeros({3, 0, 4});
  Tensor gx = Tensor::zeros({3, 0, 4}, DType::kF32, kGpu);
  EXPECT_TRUE(same_bits(sum(gx, 1), sum(x, 1)));    // zeros
  EXPECT_TRUE(same_bits(mean(gx, 1), mean(x, 1)));  // NaN (0 / 0), as on the CPU
  EXPECT_EQ(sum(gx, 0).numel(), 0);
  EXPECT_EQ(sum(gx).item(), 0.0);
}

TEST_F(ReduceCuda, BackwardMatchesCpu) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = random_tensor({6, 7, 8}, 5, dt), gx = to_gpu(x);
    x.set_requires_grad(true);
    gx.set_requires_grad(true);
    Tensor gy = random_tensor({6, 1, 8}, 6, dt);
    mean(x, 1, true).backward(gy);
    mean(gx, 1, true).backward(to_gpu(gy));
    EXPECT_TRUE(same_bits(gx.grad(), x.grad()));  // g / 7 rounded the same way
    x.zero_grad();
    gx.zero_grad();
    sum(x).backward(Tensor::scalar(0.75, dt));
    sum(gx).backward(Tensor::scalar(0.75, dt, kGpu));
    EXPECT_TRUE(same_bits(gx.grad(), x.grad()));
  }
}

}  // namespace
}  // namespace kiln
