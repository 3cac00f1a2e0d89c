// CPU tests for matmul / linear / linear_gelu / mlp_gelu: values against a plain f64 triple loop,
// transposes and batching, gradients against f64 finite differences, and clear errors (shapes,
// dtypes, devices).
#include "core/ops/matmul.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/check.h"
#include "core/ops/activation.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::randn64;

// C = op(A) @ op(B) for 2-D f64 tensors, by definition.
std::vector<double> naive(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  std::vector<double> va = a.to_vector(), vb = b.to_vector();
  const int64_t m = ta ? a.size(1) : a.size(0), k = ta ? a.size(0) : a.size(1);
  const int64_t n = tb ? b.size(0) : b.size(1);
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) {
        const double x = ta ? va[p * a.size(1) + i] : va[i * a.size(1) + p];
        const double y = tb ? vb[j * b.size(1) + p] : vb[p * b.size(1) + j];
        c[i * n + j] += x * y;
      }
  return c;
}

TEST(Matmul, ValuesWithEveryTransposeCombination) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = randn64(ta ? Shape{7, 5} : Shape{5, 7}, 1),
             b = randn64(tb ? Shape{3, 7} : Shape{7, 3}, 2);
      Tensor c = matmul(a, b, ta, tb);
      ASSERT_EQ(c.shape(), (Shape{5, 3}));
      std::vector<double> got = c.to_vector(), want = naive(a, b, ta, tb);
      for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << ta << tb;
    }
  }
}

TEST(Matmul, BatchedAndSharedRightOperand) {
  Tensor a = randn64({2, 3, 4, 5}, 3), b = randn64({5, 6}, 4), bb = randn64({2, 3, 5, 6}, 5);
  EXPECT_EQ(matmul(a, b).shape(), (Shape{2, 3, 4, 6}));
  Tensor c = matmul(a, bb);
  EXPECT_EQ(c.shape(), (Shape{2, 3, 4, 6}));
  // Batch element (1, 2) equals the 2-D product of its slices.
  Tensor a12 = a.narrow(0, 1, 1).narrow(1, 2, 1).reshape({4, 5});
  Tensor b12 = bb.narrow(0, 1, 1).narrow(1, 2, 1).reshape({5, 6});
  std::vector<double> want = naive(a12, b12, false, false);
  std::vector<double> got = c.narrow(0, 1, 1).narrow(1, 2, 1).contiguous().to_vector();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12);
}

TEST(Matmul, GradientsMatchFiniteDifferences) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      auto r = gradcheck(
          [ta, tb](auto& x) { return matmul(x[0], x[1], ta, tb); },
          {randn64(ta ? Shape{4, 3} : Shape{3, 4}, 6), randn64(tb ? Shape{2, 4} : Shape{4, 2}, 7)});
      EXPECT_LE(r.max_rel_error, 1e-6) << ta << tb << " " << r.worst;
    }
  }
  auto r = gradcheck([](auto& x) { return matmul(x[0], x[1]); },
                     {randn64({2, 3, 4}, 8), randn64({2, 4, 2}, 9)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  r = gradcheck([](auto& x) { return matmul(x[0], x[1], true, false); },
                {randn64({2, 4, 3}, 10), randn64({4, 5}, 11)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
}

TEST(Linear, ValuesShapesAndGradients) {
  Tensor x = randn64({2, 3, 4}, 12), w = randn64({5, 4}, 13), b = randn64({5}, 14);
  Tensor y = linear(x, w, b);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 5}));
  std::vector<double> want = naive(x.reshape({6, 4}), w, false, true);
  std::vector<double> got = y.to_vector(), bv = b.to_vector();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i] + bv[i % 5], 1e-12);
  auto r = gradcheck([](auto& t) { return linear(t[0], t[1], t[2]); }, {x, w, b});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  r = gradcheck([](auto& t) { return linear_gelu(t[0], t[1], t[2]); }, {x, w, b});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  r = gradcheck([](auto& t) { return mlp_gelu(t[0], t[1], t[2], t[3], t[4]); },
                {x, w, b, randn64({3, 5}, 15), randn64({3}, 16)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
}

TEST(Linear, FusedVariantsEqualTheComposition) {
  Tensor x = randn64({6, 4}, 17), w1 = randn64({8, 4}, 18), b1 = randn64({8}, 19);
  Tensor w2 = randn64({3, 8}, 20), b2 = randn64({3}, 21);
  EXPECT_TRUE(testing::bit_equal(linear_gelu(x, w1, b1), gelu(linear(x, w1, b1))));
  EXPECT_TRUE(
      testing::bit_equal(mlp_gelu(x, w1, b1, w2, b2), linear(gelu(linear(x, w1, b1)), w2, b2)));
}

TEST(Matmul, Bf16ComputesInF32AndRounds) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2}, DType::kBF16);
  Tensor c = matmul(a, a);
  EXPECT_EQ(c.dtype(), DType::kBF16);
  EXPECT_EQ(c.to_vector(), (std::vector<double>{7, 10, 15, 22}));
}

TEST(Matmul, BadInputIsAClearError) {
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 5}));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("inner dimensions differ (3 vs 4)")));
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({3}), Tensor::zeros({3, 2}));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("at least 2 dims")));
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 2}));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("batch dims")));
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, DType::kI32));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("floating")));
  EXPECT_THAT(
      [] {
        linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 5}));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("does not match weight")));
  EXPECT_THAT(
      [] {
        linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 3}), Tensor::zeros({5}));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("bias")));
  // Mixed float dtypes are rejected, not promoted: both operands must have one dtype (the caller
  // casts, e.g. nn::to_compute), for bf16 as for f64.
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, DType::kF64));
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("matmul: dtype mismatch, f32[2, 3] cpu vs f64[3, 2] cpu")));
  EXPECT_THAT(
      [] {
        matmul(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}, DType::kBF16));
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("matmul: dtype mismatch, f32[2, 3] cpu vs bf16[3, 2] cpu")));
  EXPECT_THAT(
      [] {
        linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 3}, DType::kBF16));
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("linear: dtype mismatch, f32[2, 3] cpu vs bf16[4, 3] cpu")));
  EXPECT_THAT(
      [] {
        linear(Tensor::zeros({2, 3}), Tensor::zeros({4, 3}), Tensor::zeros({4}, DType::kF64));
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("linear: dtype mismatch, f32[2, 3] cpu vs f64[4] cpu")));
  // Operands on different devices (a CUDA tensor can be made without a GPU, testing/fake_cuda.h).
  Tensor a = Tensor::zeros({2, 3}), ac = testing::fake_cuda_tensor({2, 3});
  Tensor bc = testing::fake_cuda_tensor({3, 2}), wc = testing::fake_cuda_tensor({4, 3});
  EXPECT_THAT([&] { matmul(a, bc); },
              ::testing::ThrowsMessage<Error>(
                  HasSubstr("matmul: device mismatch, f32[2, 3] cpu vs f32[3, 2] cuda:0")));
  EXPECT_THAT(
      [&] {
        matmul(ac, Tensor::zeros({3, 2}));
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("matmul: device mismatch, f32[2, 3] cuda:0 vs f32[3, 2] cpu")));
  EXPECT_THAT([&] { linear(a, wc); },
              ::testing::ThrowsMessage<Error>(
                  HasSubstr("linear: device mismatch, f32[2, 3] cpu vs f32[4, 3] cuda:0")));
  // Without a usable GPU, CUDA operands are a clear error; with one, the CUDA kernel runs
  // (matmul_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { matmul(ac, bc); },
                ::testing::ThrowsMessage<Error>(HasSubstr("matmul on cuda:0 not built")));
  }
}

}  // namespace
}  // namespace kiln
