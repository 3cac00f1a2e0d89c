// layer_norm and add_layer_norm on CUDA against the CPU reference (core/ops/layernorm.cc), forward
// and the gradients of x, (residual,) weight and bias, for f32 / bf16 / f16 / f64; rows of 1000
// (not a multiple of 32) and 4096 columns, enough rows for several dW chunks (and for chunks
// longer than 64 rows), no bias, a strided
// x; the fused residual op against add + layer_norm on the CPU, with gradients flowing into both
// of its outputs. Every case: outputs in poisoned blocks, bit-identical rerun (cuda_op_test_util.h
// states the tolerance). Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/layernorm.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

struct Case {
  Shape x_shape;
  bool bias;
};

TEST(LayerNormCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const Case cases[] = {{{4, 33, 768}, true}, {{5, 1000}, true}, {{300, 96}, false},
                        {{3, 4096}, true},    {{7}, true},       {{1100, 40}, true},
                        {{40000, 8}, true}};  // > 512 row chunks of 64: longer chunks
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const int64_t ch = c.x_shape.back();
      std::vector<Tensor> in = {rand_cpu(c.x_shape, dt, gen), rand_cpu({ch}, dt, gen)};
      if (c.bias) in.push_back(rand_cpu({ch}, dt, gen));
      const std::string what = std::string("layer_norm ") + dtype_name(dt) + " " +
                               shape_str(c.x_shape) + (c.bias ? "" : " no bias");
      expect_gpu_matches_cpu(
          [&](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{
                layer_norm(v[0], v[1], v.size() > 2 ? v[2] : Tensor(), 1e-5)};
          },
          in, gen, what);
    }
  }
}

TEST(LayerNormCuda, StridedInputAndLargeEps) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  std::vector<Tensor> in = {rand_cpu({64, 24}, DType::kF32, gen), rand_cpu({64}, DType::kF32, gen),
                            rand_cpu({64}, DType::kF32, gen)};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        // (24, 64) view of a (64, 24) tensor: not contiguous.
        return std::vector<Tensor>{layer_norm(v[0].transpose(0, 1), v[1], v[2], 0.5)};
      },
      in, gen, "layer_norm transposed x, eps 0.5");
}

TEST(AddLayerNormCuda, FusedMatchesAddThenLayerNormOnCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (const Shape& s : {Shape{4, 33, 768}, Shape{300, 100}}) {
      const int64_t ch = s.back();
      for (bool bias : {true, false}) {
        std::vector<Tensor> in = {rand_cpu(s, dt, gen), rand_cpu(s, dt, gen),
                                  rand_cpu({ch}, dt, gen)};
        if (bias) in.push_back(rand_cpu({ch}, dt, gen));
        const std::string what = std::string("add_layer_norm ") + dtype_name(dt) + " " +
                                 shape_str(s) + (bias ? "" : " no bias");
        // On the CPU add_layer_norm is add + layer_norm; on CUDA one fused kernel. Both outputs
        // (the residual stream and the normalised value) get an upstream gradient.
        expect_gpu_matches_cpu(
            [](const std::vector<Tensor>& v) {
              auto [sum, y] = add_layer_norm(v[0], v[1], v[2], v.size() > 3 ? v[3] : Tensor());
              return std::vector<Tensor>{sum, y};
            },
            in, gen, what);
      }
    }
  }
}

TEST(AddLayerNormCuda, ResidualSumIsRoundedBeforeNormalising) {
  KILN_SKIP_WITHOUT_GPU();
  // bf16: the stored sum is rounded to bf16 and the normalised value is computed from the rounded
  // sum, exactly as the composed add then layer_norm does.
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({8, 256}, DType::kBF16, gen), r = rand_cpu({8, 256}, DType::kBF16, gen);
  Tensor w = rand_cpu({256}, DType::kBF16, gen), b = rand_cpu({256}, DType::kBF16, gen);
  auto [sum, y] = add_layer_norm(x.to(Device::cuda(0)), r.to(Device::cuda(0)),
                                 w.to(Device::cuda(0)), b.to(Device::cuda(0)));
  Tensor want_sum = add(x, r);
  EXPECT_TRUE(testing::bit_equal(sum.to(Device::cpu()), want_sum));
  testing::expect_gpu_close(y, layer_norm(want_sum, w, b), "y from the rounded sum");
}

}  // namespace
}  // namespace kiln
