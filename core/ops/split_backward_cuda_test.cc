// The split backward (backward_input_only + run_weights) through the CUDA nodes with parameters
// (label gpu; skips without a GPU): the fused MLP (its hidden gradient kept between the passes),
// layer_norm with bias and linear+GELU, f32. The input pass leaves every parameter's .grad
// undefined; after the weight pass every .grad equals backward()'s.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "core/autograd.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using SplitBackwardCuda = GpuTest;

constexpr int64_t kRows = 48, kC = 32, kH = 64;

struct Net {
  std::map<std::string, Tensor> p;
  Tensor x;  // (rows, C) leaf requiring grad: the received activation

  Net() {
    const Device gpu = Device::cuda(0);
    uint64_t seed = 11;
    auto param = [&](const std::string& name, const Shape& shape) {
      p[name] = random_tensor(shape, ++seed, DType::kF32, gpu, 0.2).set_requires_grad(true);
    };
    param("w1", {kH, kC});
    param("b1", {kH});
    param("w2", {kC, kH});
    param("b2", {kC});
    param("ln_w", {kC});
    param("ln_b", {kC});
    param("w3", {kC, kC});
    param("b3", {kC});
    x = random_tensor({kRows, kC}, 3, DType::kF32, gpu).set_requires_grad(true);
  }
  Tensor forward() {
    Tensor h = mlp_gelu(x, p["w1"], p["b1"], p["w2"], p["b2"]);
    h = layer_norm(h, p["ln_w"], p["ln_b"]);
    return linear_gelu(h, p["w3"], p["b3"]);
  }
};

TEST_F(SplitBackwardCuda, MatchesBackward) {
  const Tensor g = random_tensor({kRows, kC}, 5, DType::kF32, Device::cuda(0));
  Net full, split;
  full.forward().backward(g);
  Tensor out = split.forward();
  DeferredWeights w = backward_input_only({out}, {g}, {split.x});
  EXPECT_TRUE(same_bits(split.x.grad(), full.x.grad()));
  for (auto& [name, t] : split.p) EXPECT_FALSE(t.grad().defined()) << name;
  run_weights(std::move(w));
  for (auto& [name, t] : full.p) {
    ASSERT_TRUE(split.p[name].grad().defined()) << name;
    if (name == "b1") {
      // The weight pass sums b1's gradient from the kept hidden gradient (with w1's GEMM);
      // backward() sums it with the hidden gradient (matmul_dgelu): another f32 summation order.
      KILN_EXPECT_CLOSE(split.p[name].grad(), t.grad(), 1e-5, 1e-6);
    } else {
      EXPECT_TRUE(same_bits(split.p[name].grad(), t.grad())) << name;
    }
  }
}

}  // namespace
}  // namespace kiln
