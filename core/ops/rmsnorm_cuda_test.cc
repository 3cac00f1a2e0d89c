// rms_norm and add_rms_norm on CUDA against the CPU reference (core/ops/rmsnorm.cc), forward and
// the gradients of x, (residual,) and weight, for f32 / bf16 / f16 / f64; rows of 1000 (not a
// multiple of 32) and 4096 columns, enough rows for several dW chunks (and chunks longer than 64
// rows), a strided x; the fused residual op against add + rms_norm on the CPU, with gradients
// flowing into both of its outputs. Every case: outputs in poisoned blocks, bit-identical rerun
// (cuda_op_test_util.h states the tolerance). Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/rmsnorm.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(RmsNormCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const Shape shapes[] = {{4, 33, 768}, {5, 1000}, {300, 96}, {3, 4096}, {7}, {40000, 8}};
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
    for (const Shape& s : {Shape{4, 33, 768}, Shape{300, 100}}) {
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
