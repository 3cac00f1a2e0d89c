// softmax and log_softmax on CUDA against the CPU reference (core/ops/softmax.cc), forward and
// backward, f32 / bf16 / f16 / f64: a GPT-2-sized vocabulary row (50257, the 1024-thread path),
// short rows (17: one warp), each dim of a 3-dim tensor (dims other than the last go through a
// transposed copy), a non-contiguous input. Every case: outputs and gradients in poisoned blocks,
// bit-identical rerun (cuda_op_test_util.h states the tolerance). Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/softmax.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(SoftmaxCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape shape;
    int64_t dim;
  };
  const Case cases[] = {{{3, 50257}, -1}, {{64, 17}, -1}, {{5, 6, 7}, 0},
                        {{5, 6, 7}, 1},   {{5, 6, 7}, 2}, {{300, 130}, -1}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      for (bool log : {false, true}) {
        const int64_t d = c.dim;
        const std::string what = std::string(log ? "log_softmax " : "softmax ") + dtype_name(dt) +
                                 " " + shape_str(c.shape) + " dim " + std::to_string(d);
        std::vector<Tensor> in = {rand_cpu(c.shape, dt, gen)};
        expect_gpu_matches_cpu(
            [d, log](const std::vector<Tensor>& v) {
              return std::vector<Tensor>{log ? log_softmax(v[0], d) : softmax(v[0], d)};
            },
            in, gen, what);
      }
    }
  }
}

TEST(SoftmaxCuda, NonContiguousInputAndLargeLogits) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  std::vector<Tensor> in = {rand_cpu({40, 24}, DType::kF32, gen)};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        Tensor big = v[0].transpose(0, 1);  // (24, 40), not contiguous
        return std::vector<Tensor>{softmax(big, -1), log_softmax(big, -1)};
      },
      in, gen, "transposed");
  // Logits of a few hundred: exp would overflow in f32 without the max shift.
  Tensor big = rand_cpu({4, 1000}, DType::kF32, gen);
  std::vector<double> vals = big.to_vector();
  for (double& x : vals) x *= 100;
  std::vector<Tensor> in2 = {Tensor::from_vector(vals, {4, 1000})};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        return std::vector<Tensor>{softmax(v[0]), log_softmax(v[0])};
      },
      in2, gen, "large logits");
}

}  // namespace
}  // namespace kiln
