// Tests for dropout: the mask as a pure function of the generator state, the kept fraction, the
// scaling, the gradient (the same mask), the identity cases, and bad input.
#include "core/ops/dropout.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/check.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"
#include "core/thread_pool.h"

namespace kiln {
namespace {

using testing::bit_equal;
using testing::gradcheck;
using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

TEST(Dropout, MaskIsAPureFunctionOfSeedAndOffset) {
  Tensor x = randn64({64, 33}, 1);
  Generator g(42);
  g.reserve(1000);  // start somewhere other than offset 0
  const GeneratorState s0 = g.state();
  Tensor a = dropout(x, 0.3, g);
  EXPECT_EQ(g.state().offset, s0.offset + 64 * 33);  // one reservation of numel counters
  g.set_state(s0);
  Tensor b = dropout(x, 0.3, g);
  EXPECT_TRUE(bit_equal(a, b));   // same state: same mask (what activation recompute relies on)
  Tensor c = dropout(x, 0.3, g);  // the generator moved on: a different offset
  EXPECT_FALSE(bit_equal(a, c));
  Generator other(43);
  other.set_state({43, s0.offset});
  EXPECT_FALSE(bit_equal(a, dropout(x, 0.3, other)));  // a different seed
  // Element i is kept exactly when rng_uniform_f(seed, offset + i) >= p, scaled by 1 / (1 - p).
  std::vector<double> xv = x.to_vector(), av = a.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool keep = rng_uniform_f(42, s0.offset + i) >= 0.3f;
    EXPECT_EQ(av[i], keep ? xv[i] * (1.0 / 0.7) : 0.0) << i;
  }
}

TEST(Dropout, IndependentOfThreadCountAndLayout) {
  Tensor x = randn64({300, 257}, 2);
  Generator g(5);
  const int threads = num_threads();
  set_num_threads(1);
  Tensor one = dropout(x, 0.5, g);
  set_num_threads(4);
  g.set_state({5, 0});
  Tensor four = dropout(x, 0.5, g);
  set_num_threads(threads);
  EXPECT_TRUE(bit_equal(one, four));
  // The counter is the row-major index over the logical shape, whatever the strides.
  Tensor xt = x.transpose(0, 1);
  g.set_state({5, 0});
  Tensor strided = dropout(xt, 0.5, g);
  g.set_state({5, 0});
  EXPECT_TRUE(bit_equal(strided, dropout(xt.contiguous(), 0.5, g)));
}

TEST(Dropout, KeptFractionIsOneMinusP) {
  const int64_t n = 1 << 20;
  Tensor x = Tensor::full({n}, 1.0);
  for (double p : {0.1, 0.5, 0.9}) {
    Generator g(7);
    std::vector<double> y = dropout(x, p, g).to_vector();
    int64_t kept = 0;
    for (double v : y) {
      if (v != 0.0) {
        ++kept;
        EXPECT_FLOAT_EQ(v, 1.0 / (1.0 - p));
      }
    }
    // 6 standard deviations of a binomial(n, 1 - p) fraction: at most 0.003.
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(static_cast<double>(kept) / n, 1.0 - p, 6 * sigma) << p;
  }
}

TEST(Dropout, GradientIsMaskTimesScale) {
  Tensor x = randn64({40, 50}, 3).set_requires_grad(true);
  Generator g(9);
  Tensor y = dropout(x, 0.25, g);
  Tensor go = randn64({40, 50}, 4);
  y.backward(go);
  std::vector<double> yv = y.to_vector(), xv = x.to_vector(), gv = x.grad().to_vector(),
                      gov = go.to_vector();
  int64_t zeros = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    const bool kept = yv[i] != 0.0;
    zeros += !kept;
    EXPECT_EQ(gv[i], kept ? gov[i] * (1.0 / 0.75) : 0.0) << i;
  }
  EXPECT_GT(zeros, 0);
  // Finite differences, replaying the same generator state on every evaluation.
  const GeneratorState s0{11, 123};
  Tensor x2 = randn64({6, 7}, 5);
  auto r = gradcheck(
      [&](const std::vector<Tensor>& in) {
        g.set_state(s0);
        return dropout(in[0], 0.4, g);
      },
      {x2});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  std::cout << "[dropout gradcheck] max_rel_error " << r.max_rel_error << "\n";
}

TEST(Dropout, IdentityWhenOffOrPIsZero) {
  Tensor x = randn64({5, 5}, 6);
  Generator g(1);
  EXPECT_TRUE(dropout(x, 0.0, g).same(x));
  EXPECT_TRUE(dropout(x, 0.5, g, /*training=*/false).same(x));
  EXPECT_EQ(g.state().offset, 0u);  // nothing drawn
}

TEST(Dropout, LowPrecisionKeepsDtype) {
  Tensor x = randn64({8, 8}, 7);
  Generator g(2);
  Tensor y64 = dropout(x, 0.5, g);
  g.set_state({2, 0});
  Tensor yb = dropout(x.to(DType::kBF16), 0.5, g);
  EXPECT_EQ(yb.dtype(), DType::kBF16);
  std::vector<double> a = y64.to_vector(), b = yb.to_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i] == 0.0, b[i] == 0.0) << i;            // the same mask
    EXPECT_NEAR(b[i], a[i], std::abs(a[i]) / 128) << i;  // bf16 input and output rounding
  }
}

TEST(Dropout, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({4});
  Generator g(0);
  EXPECT_THAT([&] { dropout(x, 1.0, g); },
              ThrowsMessage<Error>(HasSubstr("dropout: p must be in [0, 1), got 1")));
  EXPECT_THAT([&] { dropout(x, -0.1, g); },
              ThrowsMessage<Error>(HasSubstr("dropout: p must be in [0, 1), got -0.1")));
  EXPECT_THAT([&] { dropout(x, std::numeric_limits<double>::quiet_NaN(), g); },
              ThrowsMessage<Error>(HasSubstr("dropout: p must be in [0, 1)")));
  EXPECT_THAT([&] { dropout(Tensor::zeros({4}, DType::kI32), 0.5, g); },
              ThrowsMessage<Error>(HasSubstr("dropout: expected a floating tensor")));
  Tensor xc = testing::fake_cuda_tensor({4});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in dropout_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { dropout(xc, 0.5, g); },
                ThrowsMessage<Error>(HasSubstr("dropout: x is on cuda:0 but")));
    EXPECT_EQ(g.state().offset, 0u);  // rejected calls draw nothing
  }
}

}  // namespace
}  // namespace kiln
