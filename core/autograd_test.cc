// Tests for the autograd engine: accumulation, shared inputs, hooks, grad(), NoGradGuard.
#include "core/autograd.h"

#include <gtest/gtest.h>

#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/view.h"

namespace kiln {
namespace {

TEST(Autograd, DiamondAndAccumulation) {
  Tensor x = Tensor::from_vector({1, 2, 3}, {3}).set_requires_grad(true);
  Tensor y = mul(x, x);            // x^2
  Tensor z = add(y, scale(x, 3));  // x^2 + 3x
  z.backward(Tensor::full({3}, 1.0));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{5, 7, 9}));
  // A second backward accumulates.
  Tensor w = scale(x, 2);
  w.backward(Tensor::full({3}, 1.0));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{7, 9, 11}));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = Tensor::from_vector({1, 2}, {2}).set_requires_grad(true);
  {
    NoGradGuard ng;
    EXPECT_FALSE(mul(x, x).requires_grad());
  }
  EXPECT_TRUE(mul(x, x).requires_grad());
}

TEST(Autograd, GradReadyHookFiresOnceWhenComplete) {
  Tensor w = Tensor::from_vector({1, 2}, {2}).set_requires_grad(true);
  std::vector<std::vector<double>> seen;
  w.register_grad_ready_hook([&](Tensor& t) { seen.push_back(t.grad().to_vector()); });
  // w is used three times; the hook must see the full sum once.
  Tensor y = add(add(mul(w, w), w), scale(w, 2.0));
  y.backward(Tensor::full({2}, 1.0));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<double>{5, 7}));
}

TEST(Autograd, GradCapturesWithoutTouchingDotGrad) {
  Tensor x = Tensor::from_vector({2, 3}, {2}).set_requires_grad(true);
  Tensor y = mul(x, x);
  auto g = grad({y}, {Tensor::full({2}, 1.0)}, {x});
  EXPECT_EQ(g[0].to_vector(), (std::vector<double>{4, 6}));
  EXPECT_FALSE(x.grad().defined());
}

// y = s * x whose backward adds its gradient into x's leaf .grad when accumulation_target offers
// it (as the CUDA linear nodes do with their weight GEMM) and returns the marker.
class ScaleIntoNode final : public Node {
 public:
  const char* name() const override { return "ScaleInto"; }
  double s = 1;
  int* direct = nullptr;  // counts the direct additions
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gx = scale(g[0], s);
    Tensor into = accumulation_target(next[0], g[0].shape(), g[0].device());
    if (!into.defined()) return {gx};
    add_(into, gx.to(DType::kF32));
    ++*direct;
    return {accumulated_marker()};
  }
};

Tensor scale_into(const Tensor& x, double s, int* direct) {
  Tensor y = scale(x.detach(), s);
  if (auto n = record<ScaleIntoNode>({&x})) {
    n->s = s;
    n->direct = direct;
    set_history(y, n);
  }
  return y;
}

TEST(Autograd, DirectAccumulationThroughACastAndBesideOtherUses) {
  // An f32 leaf with a defined .grad (as DataParallel's flat buffers), cast to f64 and used twice:
  // once by the direct-accumulating node, once by an ordinary op. .grad = G0 + 3 + 2 x, the hook
  // fires once with the whole sum, and the direct path was taken.
  Tensor p = Tensor::from_vector({1, 2}, {2}).to(DType::kF32).detach().set_requires_grad(true);
  p.set_grad(Tensor::from_vector({10, 20}, {2}).to(DType::kF32));
  std::vector<std::vector<double>> seen;
  p.register_grad_ready_hook([&](Tensor& t) { seen.push_back(t.grad().to_vector()); });
  int direct = 0;
  Tensor c = p.to(DType::kF64);
  Tensor y = add(scale_into(c, 3, &direct), mul(c, c));
  y.backward(Tensor::full({2}, 1.0, DType::kF64));
  EXPECT_EQ(direct, 1);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{15, 27}));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], (std::vector<double>{15, 27}));
  // The marker alone through the Cast (no other use): .grad += 3, hook once more.
  scale_into(p.to(DType::kF64), 3, &direct).backward(Tensor::full({2}, 1.0, DType::kF64));
  EXPECT_EQ(direct, 2);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{18, 30}));
  EXPECT_EQ(seen.size(), 2u);
}

TEST(Autograd, NoDirectAccumulationWithoutAGradOrUnderGrad) {
  int direct = 0;
  Tensor p = Tensor::from_vector({1, 2}, {2}).to(DType::kF32).detach().set_requires_grad(true);
  // No .grad yet: the ordinary path allocates it.
  scale_into(p, 3, &direct).backward(Tensor::full({2}, 1.0, DType::kF32));
  EXPECT_EQ(direct, 0);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{3, 3}));
  // Now it has one: the next backward adds into it directly.
  scale_into(p, 3, &direct).backward(Tensor::full({2}, 1.0, DType::kF32));
  EXPECT_EQ(direct, 1);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{6, 6}));
  // grad() captures p: .grad is not touched and the captured gradient is the node's own.
  auto g = grad({scale_into(p, 3, &direct)}, {Tensor::full({2}, 1.0, DType::kF32)}, {p});
  EXPECT_EQ(direct, 1);
  EXPECT_EQ(g[0].to_vector(), (std::vector<double>{3, 3}));
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{6, 6}));
}

TEST(Autograd, DirectAccumulationInTheWeightPassOfASplitBackward) {
  // y = x * (3 c), c = p cast to f64: the input pass gives x its gradient (3 c) and leaves p's
  // .grad and hook alone; the weight pass adds 3 x into p's .grad directly and fires the hook.
  Tensor x = Tensor::from_vector({1, 2}, {2}).to(DType::kF64).detach().set_requires_grad(true);
  Tensor p = Tensor::from_vector({1, 2}, {2}).to(DType::kF32).detach().set_requires_grad(true);
  p.set_grad(Tensor::from_vector({10, 20}, {2}).to(DType::kF32));
  int hooks = 0, direct = 0;
  p.register_grad_ready_hook([&](Tensor&) { ++hooks; });
  Tensor y = mul(x, scale_into(p.to(DType::kF64), 3, &direct));
  DeferredWeights w = backward_input_only({y}, {Tensor::full({2}, 1.0, DType::kF64)}, {x});
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{3, 6}));
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{10, 20}));
  EXPECT_EQ(hooks + direct, 0);
  run_weights(std::move(w));
  EXPECT_EQ(direct, 1);
  EXPECT_EQ(hooks, 1);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<double>{13, 26}));
}

TEST(Autograd, UnusedOutputOfASplitGetsZeros) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {4}).set_requires_grad(true);
  auto parts = split(x, {1, 3}, 0);
  Tensor y = scale(parts[1], 2.0);
  y.backward(Tensor::full({3}, 1.0));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<double>{0, 2, 2, 2}));
}

TEST(Autograd, BackwardOnNonGradTensorIsAnError) {
  Tensor x = Tensor::from_vector({1}, {1});
  EXPECT_THROW(x.backward(), Error);
}

}  // namespace
}  // namespace kiln
