// Tests for activation recompute: gradients equal (bit for bit) to running without recompute, for
// inputs and for parameters read inside the block, with dropout replayed and hooks firing once.
#include "core/recompute.h"

#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

// An op with run state that fn's first run advances (a stand-in for fp8 delayed scaling's amax
// histories) logs what it used and reads it back in the recomputation: the recomputed output, and
// so the gradient, is the first run's although the state moved on, and the state moves once.
TEST(Recompute, OpsReplayWhatTheyLoggedInTheFirstRun) {
  double state = 1.0;
  std::vector<int> seen;  // per run of fn: 0 no log, 1 recording, 2 replaying
  auto block = [&](const Tensor& x) {
    RecomputeLog* log = recompute_log();
    double used = state;
    if (log != nullptr && log->replaying) {
      used = log->tensors.at(log->next++).item();
    } else {
      state += 1.0;
      if (log != nullptr) log->tensors.push_back(Tensor::scalar(used));
    }
    seen.push_back(log == nullptr ? 0 : log->replaying ? 2 : 1);
    return scale(x, used);
  };
  EXPECT_EQ(recompute_log(), nullptr) << "outside a region";
  Tensor x = Tensor::full({3}, 2.0).set_requires_grad(true);
  Tensor y = checkpoint(block, x);
  EXPECT_EQ(state, 2.0);
  y.backward(Tensor::full({3}, 1.0));
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
  EXPECT_EQ(state, 2.0) << "the recomputation advanced the state";
  EXPECT_TRUE(testing::bit_equal(x.grad(), Tensor::full({3}, 1.0)))
      << "scaled by 1, as the first run";
  EXPECT_EQ(recompute_log(), nullptr) << "the region's log left current";
  {
    NoGradGuard ng;  // no tape, no recomputation: nothing logged
    (void)checkpoint(block, x.detach());
  }
  EXPECT_EQ(seen.back(), 0);
}

TEST(Recompute, GradientsBitIdenticalForInputsAndParams) {
  Generator g(7);
  Tensor w = randn({5, 4}, g).set_requires_grad(true);
  Tensor b = randn({5}, g).set_requires_grad(true);
  Tensor x0 = randn({3, 4}, g);
  auto block = [&](const Tensor& x) { return mul(linear(x, w, b), linear(x, w, b)); };

  Tensor x1 = x0.clone().set_requires_grad(true);
  block(x1).backward(Tensor::full({3, 5}, 1.0));
  Tensor gw = w.grad(), gb = b.grad(), gx = x1.grad();
  w.zero_grad();
  b.zero_grad();

  int hook_calls = 0;
  w.register_grad_ready_hook([&](Tensor&) { ++hook_calls; });
  Tensor x2 = x0.clone().set_requires_grad(true);
  Tensor y = checkpoint(block, x2);
  EXPECT_TRUE(y.requires_grad());
  y.backward(Tensor::full({3, 5}, 1.0));
  EXPECT_TRUE(testing::bit_equal(w.grad(), gw));
  EXPECT_TRUE(testing::bit_equal(b.grad(), gb));
  EXPECT_TRUE(testing::bit_equal(x2.grad(), gx));
  EXPECT_EQ(hook_calls, 1);
}

TEST(Recompute, ReplaysTheGeneratorState) {
  // fn draws random numbers from the default generator; recompute must see the same ones.
  auto noisy = [](const Tensor& x) {
    Tensor r = randn(x.shape(), default_generator(), x.dtype());
    return mul(x, r);
  };
  default_generator().set_state({3, 0});
  Tensor x1 = Tensor::full({8}, 2.0).set_requires_grad(true);
  noisy(x1).backward(Tensor::full({8}, 1.0));
  default_generator().set_state({3, 0});
  Tensor x2 = Tensor::full({8}, 2.0).set_requires_grad(true);
  Tensor y = checkpoint(noisy, x2);
  GeneratorState after_forward = default_generator().state();
  y.backward(Tensor::full({8}, 1.0));
  EXPECT_TRUE(testing::bit_equal(x1.grad(), x2.grad()));
  EXPECT_EQ(default_generator().state().offset, after_forward.offset);
}

TEST(Recompute, NoGradModeJustRuns) {
  Tensor x = Tensor::full({2}, 1.0).set_requires_grad(true);
  NoGradGuard ng;
  Tensor y = checkpoint([](const Tensor& t) { return scale(t, 2.0); }, x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.to_vector(), (std::vector<double>{2, 2}));
}

TEST(Recompute, GradcheckThroughCheckpoint) {
  auto r = testing::gradcheck(
      [](const std::vector<Tensor>& xs) {
        Tensor w = xs[1];
        return checkpoint([w](const Tensor& x) { return mul(matmul(x, w), matmul(x, w)); }, xs[0]);
      },
      {testing::randn64({3, 4}, 1), testing::randn64({4, 2}, 2)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
}

}  // namespace
}  // namespace kiln
