// Tests for cross_entropy: values against a plain f64 reference, ignore_index, stability for large
// logits, dtypes, gradients against finite differences, and bad input; linear_cross_entropy (the
// classifier fused with the loss) against linear + cross_entropy and finite differences.
#include "core/ops/cross_entropy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

// mean over kept rows of log(sum_j exp(x_j)) - x_target, plainly in f64 (no max shift: the test
// logits are small).
double reference_ce(const Tensor& logits, const std::vector<int64_t>& t, int64_t ignore) {
  const int64_t v = logits.size(1);
  std::vector<double> x = logits.to_vector();
  double total = 0;
  int count = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore) continue;
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(x[i * v + j]);
    total += std::log(sum) - x[i * v + t[i]];
    ++count;
  }
  return count ? total / count : 0.0;
}

TEST(CrossEntropy, MatchesReference) {
  Tensor logits = randn64({7, 11}, 1);
  std::vector<int64_t> t = {3, 0, 10, -100, 5, 5, -100};
  for (DType tdt : {DType::kI64, DType::kI32}) {
    Tensor loss = cross_entropy(logits, Tensor::from_ints(t, {7}, tdt));
    EXPECT_EQ(loss.dim(), 0);
    EXPECT_EQ(loss.dtype(), DType::kF64);
    EXPECT_NEAR(loss.item(), reference_ce(logits, t, -100), 1e-13);
  }
  // A custom ignore_index: now -100 would be out of range, so use 5 as the ignored class.
  std::vector<int64_t> t2 = {3, 0, 10, 5, 5, 1, 2};
  Tensor loss2 = cross_entropy(logits, Tensor::from_ints(t2, {7}), 5);
  EXPECT_NEAR(loss2.item(), reference_ce(logits, t2, 5), 1e-13);
  // Uniform logits: the loss is log(V).
  EXPECT_NEAR(cross_entropy(Tensor::zeros({4, 9}), Tensor::from_ints({0, 1, 2, 8}, {4})).item(),
              std::log(9.0), 1e-6);
}

TEST(CrossEntropy, AllIgnoredIsZeroWithZeroGradient) {
  Tensor logits = randn64({3, 4}, 2).set_requires_grad(true);
  Tensor loss = cross_entropy(logits, Tensor::from_ints({-100, -100, -100}, {3}));
  EXPECT_EQ(loss.item(), 0.0);
  loss.backward();
  for (double g : logits.grad().to_vector()) EXPECT_EQ(g, 0.0);
}

TEST(CrossEntropy, StableForLargeLogits) {
  // exp(1000) overflows f32 and f64; a shift of every logit by a constant leaves the loss alone.
  Tensor logits = randn64({5, 6}, 3);
  Tensor targets = Tensor::from_ints({0, 1, 2, 3, 4}, {5});
  const double ref = reference_ce(logits, targets.to_ints(), -100);
  for (DType dt : {DType::kF64, DType::kF32}) {
    Tensor shifted = add_scalar(logits, 1000.0).to(dt).set_requires_grad(true);
    Tensor loss = cross_entropy(shifted, targets);
    // f32 holds 1000 + x to about 6e-5 absolute; that error carries into the loss.
    EXPECT_NEAR(loss.item(), ref, dt == DType::kF32 ? 3e-4 : 1e-10) << dtype_name(dt);
    loss.backward();
    for (double g : shifted.grad().to_vector()) EXPECT_TRUE(std::isfinite(g));
  }
}

TEST(CrossEntropy, LowPrecisionLogits) {
  Tensor logits = randn64({8, 16}, 4);
  Tensor targets = Tensor::from_ints({1, 2, 3, 4, 5, 6, 7, 8}, {8});
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Tensor lo = logits.to(dt);
    Tensor loss = cross_entropy(lo, targets);
    EXPECT_EQ(loss.dtype(), DType::kF32);  // the loss itself is not rounded to dt
    // Computed in f32 on the rounded logits.
    const double ref = reference_ce(lo.to(DType::kF64), targets.to_ints(), -100);
    EXPECT_NEAR(loss.item(), ref, std::abs(ref) * 1e-6) << dtype_name(dt);
  }
}

TEST(CrossEntropy, GradientsMatchFiniteDifferences) {
  Tensor targets = Tensor::from_ints({2, -100, 0, 4, -100, 4}, {6});
  auto r = gradcheck([&](const std::vector<Tensor>& x) { return cross_entropy(x[0], targets); },
                     {randn64({6, 5}, 5)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  std::cout << "[cross_entropy gradcheck] max_rel_error " << r.max_rel_error << "\n";
  // Through a scaled loss, with i32 targets and no ignored rows.
  Tensor t32 = Tensor::from_ints({0, 1, 2}, {3}, DType::kI32);
  auto r2 =
      gradcheck([&](const std::vector<Tensor>& x) { return scale(cross_entropy(x[0], t32), 3.5); },
                {randn64({3, 7}, 6)});
  EXPECT_LE(r2.max_rel_error, 1e-6) << r2.worst;
}

TEST(CrossEntropy, GradientOfIgnoredRowsIsZero) {
  Tensor logits = randn64({3, 4}, 7).set_requires_grad(true);
  cross_entropy(logits, Tensor::from_ints({1, -100, 2}, {3})).backward();
  std::vector<double> g = logits.grad().to_vector();
  for (int j = 0; j < 4; ++j) EXPECT_EQ(g[4 + j], 0.0);
  // Kept rows: each sums to zero (softmax minus one-hot), divided by the 2 kept rows.
  EXPECT_NEAR(g[0] + g[1] + g[2] + g[3], 0.0, 1e-15);
  EXPECT_LT(g[1], 0.0);
}

TEST(CrossEntropy, BadInputIsAClearError) {
  Tensor logits = Tensor::zeros({3, 5});
  Tensor t = Tensor::from_ints({0, 1, 2}, {3});
  EXPECT_THAT(
      [&] {
        cross_entropy(logits, Tensor::from_ints({0, 7, 2}, {3}));
      },
      ThrowsMessage<Error>(
          HasSubstr("cross_entropy: target 7 at row 1 is out of range for V = 5")));
  EXPECT_THAT(
      [&] {
        cross_entropy(logits, Tensor::from_ints({0, -1, 2}, {3}));
      },
      ThrowsMessage<Error>(HasSubstr("target -1 at row 1 is out of range for V = 5")));
  EXPECT_THAT(
      [&] {
        cross_entropy(Tensor::zeros({3, 5}, DType::kI64), t);
      },
      ThrowsMessage<Error>(HasSubstr("cross_entropy: expected a floating tensor")));
  EXPECT_THAT([&] { cross_entropy(logits, Tensor::zeros({3})); },
              ThrowsMessage<Error>(HasSubstr("cross_entropy: targets must be i32 or i64")));
  EXPECT_THAT([&] { cross_entropy(Tensor::zeros({15}), t); },
              ThrowsMessage<Error>(HasSubstr("cross_entropy: logits (N, V) must have 2 dims")));
  EXPECT_THAT(
      [&] {
        cross_entropy(logits, Tensor::from_ints({0, 1}, {2}));
      },
      ThrowsMessage<Error>(HasSubstr("(one target per row)")));
  EXPECT_THAT([&] { cross_entropy(logits, Tensor()); },
              ThrowsMessage<Error>(HasSubstr("cross_entropy: argument 1 is an undefined tensor")));
  Tensor lc = testing::fake_cuda_tensor({3, 5}), tc = testing::fake_cuda_tensor({3}, DType::kI64);
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in cross_entropy_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { cross_entropy(lc, tc); },
                ThrowsMessage<Error>(HasSubstr("cross_entropy: logits is on cuda:0 but")));
  }
  EXPECT_THAT([&] { cross_entropy(logits, tc); },
              ThrowsMessage<Error>(HasSubstr("cross_entropy: device mismatch")));
}

TEST(LinearCrossEntropy, CpuEqualsLinearThenCrossEntropy) {
  Tensor targets = Tensor::from_ints({3, -100, 0, 6, 6, -100, 1}, {7});
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Tensor x = randn64({7, 5}, 21).to(dt).set_requires_grad(true);
    Tensor w = randn64({8, 5}, 22).to(dt).set_requires_grad(true);
    Tensor fused = linear_cross_entropy(x, w, targets);
    Tensor composed = cross_entropy(linear(x, w), targets);
    EXPECT_TRUE(testing::bit_equal(fused, composed)) << dtype_name(dt);
    std::vector<Tensor> gf = kiln::grad({fused}, {Tensor()}, {x, w});
    std::vector<Tensor> gc = kiln::grad({composed}, {Tensor()}, {x, w});
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(testing::bit_equal(gf[i], gc[i])) << i;
  }
}

TEST(LinearCrossEntropy, GradientsMatchFiniteDifferences) {
  Tensor targets = Tensor::from_ints({2, -100, 0, 4, 1, 3}, {6}, DType::kI32);
  testing::GradCheckResult r = gradcheck(
      [&](const std::vector<Tensor>& v) {
        return scale(linear_cross_entropy(v[0], v[1], targets, -100, 2), 1.7);
      },
      {randn64({6, 4}, 23), randn64({5, 4}, 24)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  EXPECT_GT(r.checked, 0);
}

TEST(LinearCrossEntropy, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({3, 4}), w = Tensor::zeros({5, 4});
  Tensor t = Tensor::from_ints({0, 1, 2}, {3});
  EXPECT_THAT(
      [&] {
        linear_cross_entropy(x, Tensor::zeros({5, 3}), t);
      },
      ThrowsMessage<Error>(HasSubstr("linear_cross_entropy: weight f32[5, 3] cpu must be "
                                     "(V, 4) to match x")));
  EXPECT_THAT(
      [&] {
        linear_cross_entropy(x, w, Tensor::from_ints({0, 1}, {2}));
      },
      ThrowsMessage<Error>(HasSubstr("(one per row)")));
  EXPECT_THAT([&] { linear_cross_entropy(x, w, Tensor::zeros({3})); },
              ThrowsMessage<Error>(HasSubstr("linear_cross_entropy: targets must be i32 or i64")));
  EXPECT_THAT([&] { linear_cross_entropy(x, w, t, -100, -1); },
              ThrowsMessage<Error>(HasSubstr("linear_cross_entropy: chunk_rows must be >= 0")));
  EXPECT_THAT(
      [&] {
        linear_cross_entropy(x, w, Tensor::from_ints({0, 5, 2}, {3}));
      },
      ThrowsMessage<Error>(HasSubstr("target 5 at row 1 is out of range for V = 5")));
  EXPECT_THAT(
      [&] {
        linear_cross_entropy(x, Tensor::zeros({5, 4}, DType::kF64), t);
      },
      ThrowsMessage<Error>(HasSubstr("linear_cross_entropy")));
}

}  // namespace
}  // namespace kiln
