// Tests for sum / mean: values, shapes (dims, keepdim, negative dims), gradients, determinism,
// bf16, bad input.
#include "core/ops/reduce.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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

// f64 reference: x (A, B, C) summed over dim d in {0, 1, 2}, returned row-major.
std::vector<double> ref_sum3(const std::vector<double>& x, const Shape& s, int d) {
  Shape o = s;
  o[d] = 1;
  std::vector<double> out(shape_numel(o), 0.0);
  for (int64_t a = 0; a < s[0]; ++a)
    for (int64_t b = 0; b < s[1]; ++b)
      for (int64_t c = 0; c < s[2]; ++c) {
        const int64_t ia = d == 0 ? 0 : a, ib = d == 1 ? 0 : b, ic = d == 2 ? 0 : c;
        out[(ia * o[1] + ib) * o[2] + ic] += x[(a * s[1] + b) * s[2] + c];
      }
  return out;
}

TEST(Reduce, ValuesByHand) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(sum(x).shape(), Shape{});
  EXPECT_EQ(sum(x).item(), 21.0);
  EXPECT_EQ(mean(x).item(), 3.5);
  EXPECT_EQ(sum(x, 0).to_vector(), (std::vector<double>{5, 7, 9}));
  EXPECT_EQ(sum(x, 1).to_vector(), (std::vector<double>{6, 15}));
  EXPECT_EQ(mean(x, 0).to_vector(), (std::vector<double>{2.5, 3.5, 4.5}));
  EXPECT_EQ(mean(x, -1).to_vector(), (std::vector<double>{2, 5}));
  EXPECT_EQ(sum(Tensor::scalar(2.5)).item(), 2.5);
  EXPECT_EQ(sum(Tensor::scalar(2.5), 0).shape(), Shape{});
  EXPECT_EQ(sum(Tensor::zeros({0, 3})).item(), 0.0);
  EXPECT_EQ(sum(Tensor::zeros({0, 3}), 0).to_vector(), (std::vector<double>{0, 0, 0}));
}

TEST(Reduce, ThreeDimShapesKeepdimAndNegativeDims) {
  const Shape s = {2, 3, 4};
  Tensor x = randn64(s, 7);
  const std::vector<double> xv = x.to_vector();
  for (int d = 0; d < 3; ++d) {
    std::vector<double> ref = ref_sum3(xv, s, d);
    Shape kept = s, dropped = s;
    kept[d] = 1;
    dropped.erase(dropped.begin() + d);
    Tensor a = sum(x, d), b = sum(x, d - 3, /*keepdim=*/true), m = mean(x, d);
    EXPECT_EQ(a.shape(), dropped);
    EXPECT_EQ(b.shape(), kept);
    EXPECT_EQ(m.shape(), dropped);
    Tensor r = Tensor::from_vector(ref, dropped, DType::kF64);
    EXPECT_LE(testing::max_scaled_error(a, r, 1e-14, 1e-14), 1.0) << "dim " << d;
    EXPECT_LE(testing::max_scaled_error(b.reshape(dropped), r, 1e-14, 1e-14), 1.0) << "dim " << d;
    for (double& v : ref) v /= s[d];
    EXPECT_LE(
        testing::max_scaled_error(m, Tensor::from_vector(ref, dropped, DType::kF64), 1e-14, 1e-14),
        1.0)
        << "dim " << d;
  }
  double total = 0;
  for (double v : xv) total += v;
  EXPECT_NEAR(sum(x).item(), total, 1e-13);
  EXPECT_NEAR(mean(x).item(), total / 24, 1e-14);
}

TEST(Reduce, LargeF32SumAccumulatesInF64AndIsThreadCountIndependent) {
  // 300001 values of 0.1f: an f32 running sum drifts by ~1e-3 relative; f64 accumulation is
  // exact to the rounding of the final result.
  const int64_t n = 300001;
  Tensor x = Tensor::full({n}, 0.1, DType::kF32);
  const double exact = n * static_cast<double>(0.1f);
  EXPECT_EQ(sum(x).item(), static_cast<double>(static_cast<float>(exact)));
  testing::expect_thread_count_independent([&] {
    Tensor big = randn64({n}, 3).to(DType::kF32);
    Tensor m = randn64({64, 300, 70}, 4).to(DType::kF32);
    return std::vector<Tensor>{sum(big), sum(m, 1), mean(m, 0), sum(m, -1, true)};
  });
}

TEST(Reduce, GradientsMatchFiniteDifferences) {
  Tensor x = randn64({2, 3, 4}, 11);
  testing::expect_gradcheck([](auto& v) { return sum(v[0]); }, {x}, "sum_all");
  testing::expect_gradcheck([](auto& v) { return mean(v[0]); }, {x}, "mean_all");
  for (int d : {0, 1, 2, -1}) {
    for (bool keep : {false, true}) {
      const std::string tag = std::to_string(d) + (keep ? "_keep" : "");
      testing::expect_gradcheck([=](auto& v) { return sum(v[0], d, keep); }, {x}, "sum_" + tag);
      testing::expect_gradcheck([=](auto& v) { return mean(v[0], d, keep); }, {x}, "mean_" + tag);
    }
  }
}

TEST(Reduce, Bf16ComputesInF32AndRounds) {
  Tensor xb =
      Tensor::from_vector({1.0, 1.0 / 256, 1.0 / 256, 3.0, 0.5, 0.25}, {2, 3}, DType::kBF16);
  Tensor s = sum(xb, 1);
  EXPECT_EQ(s.dtype(), DType::kBF16);
  // Row 0 = 1 + 2/256 = 1.0078125 (representable); each partial 1 + 1/256 would round to 1.
  EXPECT_EQ(s.to_vector(), (std::vector<double>{1.0078125, 3.75}));
  EXPECT_TRUE(testing::bit_equal(mean(xb), mean(xb.to(DType::kF32)).to(DType::kBF16)));
  Tensor leaf = xb.detach().set_requires_grad(true);
  Tensor g = kiln::grad({mean(leaf, 0)}, {Tensor::full({3}, 2.0, DType::kBF16)}, {leaf})[0];
  EXPECT_EQ(g.dtype(), DType::kBF16);
  EXPECT_EQ(g.to_vector(), (std::vector<double>(6, 1.0)));
}

TEST(Reduce, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THAT([&] { sum(x, 2); },
              ThrowsMessage<Error>(HasSubstr("sum: dim 2 out of range for a 2-dim tensor")));
  EXPECT_THAT([&] { mean(x, -3, true); },
              ThrowsMessage<Error>(HasSubstr("mean: dim -3 out of range for a 2-dim tensor")));
  EXPECT_THAT([&] { sum(Tensor::zeros({2}, DType::kI64)); },
              ThrowsMessage<Error>(HasSubstr("sum: x must be a floating tensor")));
  EXPECT_THAT([&] { mean(Tensor()); },
              ThrowsMessage<Error>(HasSubstr("mean: x is an undefined tensor")));
  if (!cuda_available()) {  // with a GPU, CUDA tensors run the CUDA kernels (reduce_cuda_test.cc)
    Tensor xc = testing::fake_cuda_tensor({2, 3});
    EXPECT_THAT([&] { sum(xc, 0); },
                ThrowsMessage<Error>(HasSubstr("sum: x is on cuda:0; only CPU tensors")));
  }
}

}  // namespace
}  // namespace kiln
