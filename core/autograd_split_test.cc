// Tests for the split backward (backward_input_only + run_weights): on a small f64 stage with
// linear, layer_norm, rms_norm, an embedding whose table is also the head (a weight used twice),
// an f32 section reached through Cast nodes and a recomputed block, the two passes give .grad bit
// for bit equal to backward(); the input pass leaves every parameter's .grad undefined, fires no
// parameter hook and runs no weight GEMM; the weight pass runs them and fires the hooks.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "core/autograd.h"
#include "core/ops/activation.h"
#include "core/ops/elementwise.h"
#include "core/ops/embedding.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/rmsnorm.h"
#include "core/ops/view.h"
#include "core/recompute.h"

namespace kiln {
namespace {

constexpr int64_t kB = 2, kT = 3, kC = 8, kV = 5, kH = 12;

Tensor filled(const Shape& shape, double seed) {
  std::vector<double> v(shape_numel(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(seed + 0.7 * static_cast<double>(i));
  return Tensor::from_vector(v, shape, DType::kF64);
}

// One pipeline stage's worth of ops over parameters shared by every copy built from the same seed.
struct Stage {
  std::map<std::string, Tensor> params;
  Tensor input;  // (B, T, C) leaf requiring grad: the received activation

  Stage() {
    int k = 0;
    auto param = [&](const std::string& name, const Shape& shape) {
      params[name] = filled(shape, 0.3 * ++k).set_requires_grad(true);
    };
    param("wte", {kV, kC});
    param("ln_w", {kC});
    param("ln_b", {kC});
    param("w1", {kH, kC});
    param("b1", {kH});
    param("w2", {kC, kH});
    param("rms_w", {kC});
    param("w3", {kC, kC});
    input = filled({kB, kT, kC}, 9.0).set_requires_grad(true);
  }

  // logits (B, T, V).
  Tensor forward() {
    const Tensor ids = Tensor::from_ints({0, 3, 1, 4, 4, 2}, {kB, kT});
    Tensor h = add(input, embedding(params["wte"], ids));
    h = layer_norm(h, params["ln_w"], params["ln_b"]);
    h = gelu(linear(h, params["w1"], params["b1"]));
    // An f32 section: activations and weight through Cast nodes (as PrecastScope does on GPUs).
    Tensor h32 = matmul(cast(h, DType::kF32), cast(params["w2"], DType::kF32), false, true);
    h = cast(h32, DType::kF64);
    Tensor w3 = params["w3"], rms_w = params["rms_w"];
    h = checkpoint([w3, rms_w](const Tensor& x) { return linear(rms_norm(x, rms_w), w3); }, h);
    return linear(h, params["wte"]);  // the tied head: wte's second use
  }
};

const Tensor& root_grad() {
  static const Tensor g = filled({kB, kT, kV}, 4.0);
  return g;
}

TEST(AutogradSplit, BothPassesGiveBackwardsGradientsBitForBit) {
  Stage full, split;
  full.forward().backward(root_grad());
  Tensor out = split.forward();
  DeferredWeights w = backward_input_only({out}, {root_grad()}, {split.input});
  run_weights(std::move(w));
  EXPECT_EQ(split.input.grad().to_vector(), full.input.grad().to_vector());
  for (auto& [name, p] : full.params) {
    ASSERT_TRUE(split.params[name].grad().defined()) << name;
    EXPECT_EQ(split.params[name].grad().to_vector(), p.grad().to_vector()) << name;
  }
}

TEST(AutogradSplit, InputPassComputesNoWeightGradientAndNoWeightGemm) {
  Stage ref, s;
  Tensor ref_out = ref.forward();
  int64_t g0 = raw::gemm_calls();
  ref_out.backward(root_grad());
  const int64_t full_gemms = raw::gemm_calls() - g0;
  Tensor out = s.forward();
  std::map<std::string, int> fired;
  for (auto& [name, p] : s.params) {
    const std::string n = name;
    p.register_grad_ready_hook([&fired, n](Tensor&) { ++fired[n]; });
  }
  g0 = raw::gemm_calls();
  DeferredWeights w = backward_input_only({out}, {root_grad()}, {s.input});
  const int64_t input_gemms = raw::gemm_calls() - g0;
  EXPECT_TRUE(s.input.grad().defined());
  for (auto& [name, p] : s.params) EXPECT_FALSE(p.grad().defined()) << name;
  EXPECT_TRUE(fired.empty());
  EXPECT_FALSE(w.empty());
  g0 = raw::gemm_calls();
  run_weights(std::move(w));
  const int64_t weight_gemms = raw::gemm_calls() - g0;
  // Backward: the head, w3, w2 and w1 each give one input and one weight GEMM; w3's block is
  // recomputed (one forward GEMM). The input pass: the four input GEMMs and the recompute; the
  // weight pass: the four weight GEMMs only (the recomputed graph's weight half was kept).
  EXPECT_EQ(full_gemms, 9);
  EXPECT_EQ(input_gemms, 5);
  EXPECT_EQ(weight_gemms, 4);
  for (auto& [name, p] : s.params) {
    EXPECT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(fired[name], 1) << name;
  }
}

TEST(AutogradSplit, WithoutInputsEverythingWaitsForTheWeightPass) {
  Stage full, split;
  full.forward().backward(root_grad());
  Tensor out = split.forward();
  const int64_t g0 = raw::gemm_calls();
  DeferredWeights w = backward_input_only({out}, {root_grad()}, {});
  EXPECT_EQ(raw::gemm_calls(), g0);  // the first stage: nothing to send back, nothing to do
  EXPECT_FALSE(split.input.grad().defined());
  run_weights(std::move(w));
  for (auto& [name, p] : full.params)
    EXPECT_EQ(split.params[name].grad().to_vector(), p.grad().to_vector()) << name;
}

TEST(AutogradSplit, GradRunsOnlyThePathToItsInputs) {
  Stage s;
  Tensor out = s.forward();
  const int64_t g0 = raw::gemm_calls();
  std::vector<Tensor> g = grad({out}, {root_grad()}, {s.input});
  EXPECT_EQ(raw::gemm_calls() - g0, 5);  // as the input pass
  EXPECT_TRUE(g[0].defined());
  EXPECT_FALSE(s.input.grad().defined());
  for (auto& [name, p] : s.params) EXPECT_FALSE(p.grad().defined()) << name;
}

}  // namespace
}  // namespace kiln
