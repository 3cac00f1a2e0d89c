// rotary_embedding on CUDA against the CPU reference (core/ops/rope.cc), forward and backward,
// f32 / bf16 / f16 / f64: Llama-sized heads (D 128), a small odd T, a position offset, a large
// theta, and a strided input (the (B, T, H, D) -> (B, H, T, D) transpose attention feeds it, read
// through its strides without a copy). Angles are computed in f64 on both sides. Every case:
// outputs and gradients in poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the
// tolerance). Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/rope.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(RopeCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape shape;
    double theta;
    int64_t offset;
  };
  const Case cases[] = {{{2, 3, 17, 64}, 10000.0, 0},
                        {{1, 4, 33, 128}, 500000.0, 0},
                        {{2, 2, 5, 8}, 10000.0, 1000},
                        {{1, 1, 1, 2}, 10000.0, 7}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const double theta = c.theta;
      const int64_t off = c.offset;
      std::vector<Tensor> in = {rand_cpu(c.shape, dt, gen)};
      expect_gpu_matches_cpu(
          [theta, off](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{rotary_embedding(v[0], theta, off)};
          },
          in, gen,
          std::string("rope ") + dtype_name(dt) + " " + shape_str(c.shape) + " offset " +
              std::to_string(off));
    }
  }
}

TEST(RopeCuda, StridedInput) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    std::vector<Tensor> in = {rand_cpu({2, 9, 3, 16}, dt, gen)};  // (B, T, H, D)
    expect_gpu_matches_cpu(
        [](const std::vector<Tensor>& v) {
          return std::vector<Tensor>{rotary_embedding(v[0].transpose(1, 2), 10000.0, 3)};
        },
        in, gen, std::string("rope transposed ") + dtype_name(dt));
  }
}

}  // namespace
}  // namespace kiln
