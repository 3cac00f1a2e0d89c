// rms_norm and add_rms_norm on CUDA against the CPU reference (core/ops/rmsnorm.cc), forward and
// the gradients of x, (residual,) and weight, for f32 / bf16 / f16 / f64; rows of 1000 (not a
// multiple of 32) and 4096 columns, enough rows for several dW chunks (and chunks longer than 64
// rows), a strided x; the fused residual op against add + rms_norm on the CPU, with gradients
// flowing into both of its outputs. Both kernel families of core/ops/norm_kernels.cuh (warp per
// row, block per row: f64, wide rows, misaligned inputs, KILN_NORM_KERNEL=general). Every case:
// outputs in poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the tolerance).
// Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/rmsnorm.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

// Sets KILN_NORM_KERNEL for the scope ("" unsets it).
class ScopedNormKernel {
 public:
  explicit ScopedNormKernel(const char* v) {
    if (const char* old = std::getenv("KILN_NORM_KERNEL")) old_ = old, had_ = true;
    if (*v) {
      setenv("KILN_NORM_KERNEL", v, 1);
    } else {
      unsetenv("KILN_NORM_KERNEL");
    }
  }
  ~ScopedNormKernel() {
    if (had_) {
      setenv("KILN_NORM_KERNEL", old_.c_str(), 1);
    } else {
      unsetenv("KILN_NORM_KERNEL");
    }
  }

 private:
  std::string old_;
  bool had_ = false;
};

TEST(RmsNormCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const Shape shapes[] = {{4, 33, 768}, {5, 1000},  {300, 96},  {3, 4096},
                          {7},          {40000, 8}, {80, 1600}, {9, 2056}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Shape& s : shapes) {
      std::vector<Tensor> in = {rand_cpu(s, dt, gen), rand_cpu({s.back()}, dt, gen)};
      expect_gpu_matches_cpu(
          [](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{rms_norm(v[0], v[1], 1e-6)};
          },
          in, gen, std::string("rms_norm ") + dtype_name(dt) + " " + shape_str(s));
    }
  }
}

// The same inputs through every kernel family (KILN_NORM_KERNEL unset, "general", "warp" and
// "group": the backward of wide rows by a warp per row or a 4-warp group per row; 301 rows make
// ten chunks of the group backward, the last one short), and misaligned inputs (block per row),
// plain and with the residual add.
TEST(RmsNormCuda, WarpAndBlockKernelsAndMisalignedInputs) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (const char* impl : {"", "general", "warp", "group"}) {
    ScopedNormKernel env(impl);
    for (bool misalign : {false, true}) {
      for (DType dt : {DType::kBF16, DType::kF32}) {
        for (const Shape& s : {Shape{130, 768}, Shape{3, 33, 1600}, Shape{301, 2048}}) {
          const std::string what = std::string("KILN_NORM_KERNEL='") + impl + "' " +
                                   dtype_name(dt) + " " + shape_str(s) +
                                   (misalign ? " misaligned" : "");
          testing::GpuOptions opt;
          opt.misalign = misalign;
          expect_gpu_matches_cpu(
              [](const std::vector<Tensor>& v) {
                return std::vector<Tensor>{rms_norm(v[0], v[1])};
              },
              {rand_cpu(s, dt, gen), rand_cpu({s.back()}, dt, gen)}, gen, "rms_norm " + what, opt);
          expect_gpu_matches_cpu(
              [](const std::vector<Tensor>& v) {
                auto [sum, y] = add_rms_norm(v[0], v[1], v[2]);
                return std::vector<Tensor>{sum, y};
              },
              {rand_cpu(s, dt, gen), rand_cpu(s, dt, gen), rand_cpu({s.back()}, dt, gen)}, gen,
              "add_rms_norm " + what, opt);
        }
      }
    }
  }
}

TEST(RmsNormCuda, StridedInputAndLargeEps) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  std::vector<Tensor> in = {rand_cpu({64, 24}, DType::kF32, gen), rand_cpu({64}, DType::kF32, gen)};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        return std::vector<Tensor>{rms_norm(v[0].transpose(0, 1), v[1], 0.5)};
      },
      in, gen, "rms_norm transposed x, eps 0.5");
}

TEST(AddRmsNormCuda, FusedMatchesAddThenRmsNormOnCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (const Shape& s : {Shape{4, 33, 768}, Shape{300, 100}, Shape{70, 1600}}) {
      std::vector<Tensor> in = {rand_cpu(s, dt, gen), rand_cpu(s, dt, gen),
                                rand_cpu({s.back()}, dt, gen)};
      expect_gpu_matches_cpu(
          [](const std::vector<Tensor>& v) {
            auto [sum, y] = add_rms_norm(v[0], v[1], v[2]);
            return std::vector<Tensor>{sum, y};
          },
          in, gen, std::string("add_rms_norm ") + dtype_name(dt) + " " + shape_str(s));
    }
  }
}

TEST(AddRmsNormCuda, ResidualSumIsRoundedBeforeNormalising) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({8, 256}, DType::kBF16, gen), r = rand_cpu({8, 256}, DType::kBF16, gen);
  Tensor w = rand_cpu({256}, DType::kBF16, gen);
  auto [sum, y] = add_rms_norm(x.to(Device::cuda(0)), r.to(Device::cuda(0)), w.to(Device::cuda(0)));
  Tensor want_sum = add(x, r);
  EXPECT_TRUE(testing::bit_equal(sum.to(Device::cpu()), want_sum));
  testing::expect_gpu_close(y, rms_norm(want_sum, w), "y from the rounded sum");
}

}  // namespace
}  // namespace kiln
