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
