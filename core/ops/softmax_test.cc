// Tests for softmax / log_softmax: values by hand and against an f64 reference along every dim,
// numerical stability, gradients, determinism across thread counts, bf16, bad input.
#include "core/ops/softmax.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/op_test_util.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

// f64 reference: softmax (or log_softmax) of x (A, B, C) along d.
std::vector<double> ref_softmax3(const std::vector<double>& x, const Shape& s, int d, bool log) {
  std::vector<double> y(x.size());
  auto at = [&](int64_t a, int64_t b, int64_t c) { return (a * s[1] + b) * s[2] + c; };
  Shape o = s;
  o[d] = 1;
  for (int64_t a = 0; a < o[0]; ++a)
    for (int64_t b = 0; b < o[1]; ++b)
      for (int64_t c = 0; c < o[2]; ++c) {
        auto idx = [&](int64_t k) { return at(d == 0 ? k : a, d == 1 ? k : b, d == 2 ? k : c); };
        double m = -INFINITY, z = 0;
        for (int64_t k = 0; k < s[d]; ++k) m = std::max(m, x[idx(k)]);
        for (int64_t k = 0; k < s[d]; ++k) z += std::exp(x[idx(k)] - m);
        for (int64_t k = 0; k < s[d]; ++k)
          y[idx(k)] = log ? x[idx(k)] - m - std::log(z) : std::exp(x[idx(k)] - m) / z;
      }
  return y;
}

TEST(Softmax, ValuesByHandAndStability) {
  const double e1 = std::exp(1.0), e2 = std::exp(2.0), z = 1 + e1 + e2;
  Tensor x = Tensor::from_vector({0, 1, 2}, {3}, DType::kF64);
  std::vector<double> y = softmax(x).to_vector(), l = log_softmax(x).to_vector();
  EXPECT_NEAR(y[0], 1 / z, 1e-15);
  EXPECT_NEAR(y[2], e2 / z, 1e-15);
  EXPECT_NEAR(l[1], 1 - std::log(z), 1e-15);
  // Shifted by 1000: exp would overflow without subtracting the max.
  Tensor big = Tensor::from_vector({1000, 1001, 1002}, {3}, DType::kF32);
  EXPECT_LE(testing::max_scaled_error(softmax(big), softmax(x), 1e-7, 1e-6), 1.0);
  EXPECT_LE(testing::max_scaled_error(log_softmax(big), log_softmax(x), 1e-6, 1e-6), 1.0);
  // -inf entries (masked) get probability 0 and log-probability -inf.
  const double inf = std::numeric_limits<double>::infinity();
  Tensor m = Tensor::from_vector({0, -inf, 0}, {3});
  EXPECT_EQ(softmax(m).to_vector(), (std::vector<double>{0.5, 0, 0.5}));
  EXPECT_EQ(log_softmax(m).to_vector()[1], -inf);
}

TEST(Softmax, EveryDimOfThreeDimMatchesF64Reference) {
  const Shape s = {2, 3, 4};
  Tensor x = randn64(s, 1);
  const std::vector<double> xv = x.to_vector();
  for (int d = 0; d < 3; ++d) {
    for (bool log : {false, true}) {
      Tensor r = Tensor::from_vector(ref_softmax3(xv, s, d, log), s, DType::kF64);
      Tensor y = log ? log_softmax(x, d) : softmax(x, d);
      Tensor yn = log ? log_softmax(x, d - 3) : softmax(x, d - 3);
      EXPECT_EQ(y.shape(), s);
      EXPECT_LE(testing::max_scaled_error(y, r, 1e-15, 1e-14), 1.0) << d << " " << log;
      EXPECT_TRUE(testing::bit_equal(y, yn)) << d << " " << log;
      Tensor y32 = log ? log_softmax(x.to(DType::kF32), d) : softmax(x.to(DType::kF32), d);
      EXPECT_LE(testing::max_scaled_error(y32, r, 1e-6, 1e-6), 1.0) << d << " " << log;
    }
  }
  // Non-contiguous input: the same values as its contiguous copy.
  Tensor xt = x.transpose(0, 2);
  EXPECT_TRUE(testing::bit_equal(softmax(xt, 1), softmax(xt.contiguous(), 1)));
}

TEST(Softmax, GradientsMatchFiniteDifferences) {
  Tensor x = randn64({2, 3, 4}, 5);
  for (int d : {0, 1, 2, -1}) {
    testing::expect_gradcheck([d](auto& v) { return softmax(v[0], d); }, {x},
                              "softmax_" + std::to_string(d));
    testing::expect_gradcheck([d](auto& v) { return log_softmax(v[0], d); }, {x},
                              "log_softmax_" + std::to_string(d));
  }
}

TEST(Softmax, ThreadCountIndependent) {
  testing::expect_thread_count_independent([] {
    Tensor x = randn64({128, 1000}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor gy = randn64({128, 1000}, 2).to(DType::kF32);
    Tensor y = softmax(x), l = log_softmax(x), y0 = softmax(x, 0);
    std::vector<Tensor> out = kiln::grad({y, l, y0}, {gy, gy, gy}, {x});
    out.push_back(y);
    out.push_back(l);
    out.push_back(y0);
    return out;
  });
}

TEST(Softmax, Bf16ComputesInF32AndRounds) {
  Tensor x = randn64({3, 40}, 1).to(DType::kBF16);
  Tensor x32 = x.to(DType::kF32);
  EXPECT_EQ(softmax(x).dtype(), DType::kBF16);
  EXPECT_TRUE(testing::bit_equal(softmax(x), softmax(x32).to(DType::kBF16)));
  EXPECT_TRUE(testing::bit_equal(log_softmax(x, 0), log_softmax(x32, 0).to(DType::kBF16)));
  Tensor xl = x.detach().set_requires_grad(true), xl32 = x32.detach().set_requires_grad(true);
  Tensor gy = randn64({3, 40}, 2).to(DType::kBF16);
  Tensor g = kiln::grad({log_softmax(xl)}, {gy}, {xl})[0];
  Tensor g32 = kiln::grad({log_softmax(xl32)}, {gy.to(DType::kF32)}, {xl32})[0];
  EXPECT_EQ(g.dtype(), DType::kBF16);
  // Backward reads the bf16-rounded output, so it differs from f32 by bf16 rounding (2^-8).
  EXPECT_LE(testing::max_scaled_error(g, g32, 2e-2, 2e-2), 1.0);
}

TEST(Softmax, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THAT([&] { softmax(x, 2); },
              ThrowsMessage<Error>(HasSubstr("softmax: dim 2 out of range for a 2-dim tensor")));
  EXPECT_THAT(
      [&] { log_softmax(x, -3); },
      ThrowsMessage<Error>(HasSubstr("log_softmax: dim -3 out of range for a 2-dim tensor")));
  EXPECT_THAT([] { softmax(Tensor::zeros({2}, DType::kI64)); },
              ThrowsMessage<Error>(HasSubstr("softmax: x must be a floating tensor")));
  EXPECT_THAT([] { log_softmax(Tensor()); },
              ThrowsMessage<Error>(HasSubstr("log_softmax: x is an undefined tensor")));
  Tensor xc = testing::fake_cuda_tensor({2, 3});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in softmax_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { softmax(xc); },
                ThrowsMessage<Error>(HasSubstr("softmax: x is on cuda:0 but")));
  }
}

}  // namespace
}  // namespace kiln
