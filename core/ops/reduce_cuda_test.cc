// CUDA sum / mean against the CPU reference (label gpu; skip without a GPU), on fresh random
// inputs with poisoned (NaN) allocations: every dim of several shapes, keepdim, strided inputs,
// long reductions that take the chunked two-pass path, empty dims, bit-identical repeats, and the
// backward.
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/ops/cuda_base_ops.h"
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

// Sums over the rows of a contiguous (rows, m) matrix (bias gradients) take the 16-byte-load
// column kernel: it ran (its launch count grew), agrees with the CPU as the general kernel does
// (f64 sums rounded once; same tolerances), and a column's sum does not depend on the columns
// beside it (a packed bias gradient sums bit for bit as its pieces). Inputs it cannot take (rows
// not 16-byte aligned, m not a whole number of 16-byte groups, too few rows) fall back.
TEST_F(ReduceCuda, ColumnSumsOfRowsTakeTheVectorKernel) {
  cuda::set_colsum_vec_override(1);
  const Shape shapes[] = {{4096, 768}, {1000, 264}, {129, 8}, {3, 700, 40}, {300, 3, 16}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (const Shape& s : shapes) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + shape_str(s));
      Tensor x = random_tensor(s, 7, dt), gx = to_gpu(x);
      const int64_t before = cuda::colsum_vec_launches();
      Tensor g = cuda::sum_to(gx, {s.back()});  // the bias gradients' call
      EXPECT_EQ(cuda::colsum_vec_launches(), before + 1);
      Tensor c = s.size() == 3 ? sum(sum(x.to(DType::kF64), 0), 0) : sum(x.to(DType::kF64), 0);
      KILN_EXPECT_CLOSE(g, c.to(dt), dt == DType::kF32 ? 1e-6 : 1e-2, 1e-6);
      EXPECT_EQ(g.shape(), Shape{s.back()});
    }
    // Column independence: the (rows, 3m) sum is the three (rows, m) sums side by side.
    Tensor packed = to_gpu(random_tensor({2050, 3 * 264}, 8, dt));
    Tensor whole = sum(packed, 0);
    for (int64_t p = 0; p < 3; ++p) {
      Tensor piece = sum(packed.narrow(1, p * 264, 264).contiguous(), 0);
      EXPECT_TRUE(same_bits(whole.narrow(0, p * 264, 264).contiguous(), piece)) << p;
    }
    // Fallbacks: misaligned rows (one element in), m of 12 16-bit values, 100 rows.
    Tensor flat = to_gpu(random_tensor({1 + 600 * 64}, 9, dt));
    const Tensor cases[] = {flat.narrow(0, 1, 600 * 64).reshape({600, 64}),
                            to_gpu(random_tensor({600, 12}, 10, dt)),
                            to_gpu(random_tensor({100, 64}, 11, dt))};
    for (const Tensor& t : cases) {
      SCOPED_TRACE(t.str());
      const bool eligible = dt == DType::kF32 && t.size(1) == 12 && t.size(0) == 600;
      const int64_t before = cuda::colsum_vec_launches();
      Tensor g = sum(t, 0);
      EXPECT_EQ(cuda::colsum_vec_launches(), before + (eligible ? 1 : 0));
      KILN_EXPECT_CLOSE(g, sum(t.to(Device::cpu()).to(DType::kF64), 0).to(dt),
                        dt == DType::kF32 ? 1e-6 : 1e-2, 1e-6);
    }
  }
  cuda::set_colsum_vec_override(-1);
}

}  // namespace
}  // namespace kiln
