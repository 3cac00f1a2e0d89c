// Tests for rms_norm: values by hand and against an f64 reference, shapes, gradients (x and
// weight), determinism across thread counts, bf16, bad input; add_rms_norm (the fused residual
// step) against add + rms_norm and finite differences.
#include "core/ops/rmsnorm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/op_test_util.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

std::vector<double> ref_rms_norm(const std::vector<double>& x, int64_t c,
                                 const std::vector<double>& w, double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / c; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < c; ++j) ms += x[r * c + j] * x[r * c + j] / c;
    for (int64_t j = 0; j < c; ++j) y[r * c + j] = x[r * c + j] / std::sqrt(ms + eps) * w[j];
  }
  return y;
}

TEST(RmsNorm, ValuesByHand) {
  // Row [3, 4]: mean square 12.5. Row [1, -1]: mean square 1.
  Tensor x = Tensor::from_vector({3, 4, 1, -1}, {2, 2}, DType::kF64);
  Tensor w = Tensor::from_vector({1, 2}, {2}, DType::kF64);
  std::vector<double> y = rms_norm(x, w, 0.0).to_vector();
  const double r = 1 / std::sqrt(12.5);
  std::vector<double> want = {3 * r, 8 * r, 1, -2};
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(y[j], want[j], 1e-15) << j;
  // Zero rows stay zero (eps keeps them finite).
  EXPECT_EQ(rms_norm(Tensor::zeros({1, 8}), Tensor::full({8}, 1.0)).to_vector(),
            std::vector<double>(8, 0.0));
}

TEST(RmsNorm, ThreeDimMatchesF64Reference) {
  const Shape s = {2, 3, 6};
  Tensor x = randn64(s, 1), w = randn64({6}, 2);
  Tensor r =
      Tensor::from_vector(ref_rms_norm(x.to_vector(), 6, w.to_vector(), 1e-6), s, DType::kF64);
  Tensor y = rms_norm(x, w);
  EXPECT_EQ(y.shape(), s);
  EXPECT_LE(testing::max_scaled_error(y, r, 1e-14, 1e-13), 1.0);
  Tensor y32 = rms_norm(x.to(DType::kF32), w.to(DType::kF32));
  EXPECT_EQ(y32.dtype(), DType::kF32);
  EXPECT_LE(testing::max_scaled_error(y32, r, 1e-5, 1e-5), 1.0);
  Tensor r2 =
      Tensor::from_vector(ref_rms_norm(x.to_vector(), 6, w.to_vector(), 0.3), s, DType::kF64);
  EXPECT_LE(testing::max_scaled_error(rms_norm(x, w, 0.3), r2, 1e-14, 1e-13), 1.0);
}

TEST(RmsNorm, GradientsMatchFiniteDifferences) {
  testing::expect_gradcheck([](auto& v) { return rms_norm(v[0], v[1]); },
                            {randn64({2, 3, 5}, 5), randn64({5}, 6)}, "x_w");
  testing::expect_gradcheck([](auto& v) { return rms_norm(v[0], v[1], 0.5); },
                            {randn64({4, 3}, 7), randn64({3}, 8)}, "x_w_eps0.5");
}

TEST(RmsNorm, ThreadCountIndependent) {
  testing::expect_thread_count_independent([] {
    Tensor x = randn64({512, 256}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor w = randn64({256}, 2).to(DType::kF32).set_requires_grad(true);
    Tensor y = rms_norm(x, w);
    std::vector<Tensor> out = kiln::grad({y}, {randn64({512, 256}, 4).to(DType::kF32)}, {x, w});
    out.push_back(y);
    return out;
  });
}

TEST(RmsNorm, Bf16ComputesInF32AndRounds) {
  Tensor x = randn64({4, 32}, 1).to(DType::kBF16), w = randn64({32}, 2).to(DType::kBF16);
  Tensor y = rms_norm(x, w);
  EXPECT_EQ(y.dtype(), DType::kBF16);
  EXPECT_TRUE(
      testing::bit_equal(y, rms_norm(x.to(DType::kF32), w.to(DType::kF32)).to(DType::kBF16)));
  Tensor gy = randn64({4, 32}, 4).to(DType::kBF16);
  std::vector<Tensor> leaves = {x.detach().set_requires_grad(true),
                                w.detach().set_requires_grad(true)};
  std::vector<Tensor> g = kiln::grad({rms_norm(leaves[0], leaves[1])}, {gy}, leaves);
  std::vector<Tensor> l32 = {x.to(DType::kF32).set_requires_grad(true),
                             w.to(DType::kF32).set_requires_grad(true)};
  std::vector<Tensor> g32 = kiln::grad({rms_norm(l32[0], l32[1])}, {gy.to(DType::kF32)}, l32);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(g[i].dtype(), DType::kBF16);
    // bf16 keeps 8 significant bits; the gradients are O(1).
    EXPECT_LE(testing::max_scaled_error(g[i], g32[i], 1e-2, 1e-2), 1.0) << "input " << i;
  }
}

TEST(RmsNorm, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 5}), w = Tensor::zeros({5});
  EXPECT_THAT(
      [&] {
        rms_norm(x, Tensor::zeros({5, 1}));
      },
      ThrowsMessage<Error>(HasSubstr("rms_norm: weight must have shape [5]")));
  EXPECT_THAT(
      [&] {
        rms_norm(Tensor::zeros({2, 5}, DType::kU16), w);
      },
      ThrowsMessage<Error>(HasSubstr("rms_norm: x must be a floating tensor")));
  EXPECT_THAT([&] { rms_norm(x, Tensor::zeros({5}, DType::kF16)); },
              ThrowsMessage<Error>(HasSubstr("rms_norm: dtype mismatch, weight is f16")));
  EXPECT_THAT([&] { rms_norm(Tensor(), w); },
              ThrowsMessage<Error>(HasSubstr("rms_norm: x is an undefined tensor")));
  Tensor xc = testing::fake_cuda_tensor({2, 5}), wc = testing::fake_cuda_tensor({5});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in rmsnorm_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { rms_norm(xc, wc); },
                ThrowsMessage<Error>(HasSubstr("rms_norm: x is on cuda:0 but")));
  }
}

TEST(AddRmsNorm, CpuEqualsAddThenRmsNorm) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    Tensor x = randn64({3, 4, 16}, 11).to(dt), r = randn64({3, 4, 16}, 12).to(dt);
    Tensor w = randn64({16}, 13).to(dt);
    auto [sum, y] = add_rms_norm(x, r, w, 1e-5);
    Tensor want_sum = add(x, r);
    EXPECT_TRUE(testing::bit_equal(sum, want_sum)) << dtype_name(dt);
    EXPECT_TRUE(testing::bit_equal(y, rms_norm(want_sum, w, 1e-5))) << dtype_name(dt);
  }
}

TEST(AddRmsNorm, GradientsOfBothOutputsMatchFiniteDifferences) {
  Tensor x = randn64({2, 3, 6}, 15), r = randn64({2, 3, 6}, 16), w = randn64({6}, 17);
  testing::expect_gradcheck(
      [](auto& v) {
        auto [sum, y] = add_rms_norm(v[0], v[1], v[2]);
        return add(y, scale(sum, 0.37));
      },
      {x, r, w}, "x_r_w");
}

TEST(AddRmsNorm, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 5}), w = Tensor::zeros({5});
  EXPECT_THAT([&] { add_rms_norm(x, Tensor::zeros({5}), w); },
              ThrowsMessage<Error>(HasSubstr("add_rms_norm: residual_in f32[5] cpu must have the "
                                             "shape of x f32[2, 5] cpu")));
  EXPECT_THAT(
      [&] {
        add_rms_norm(x, Tensor::zeros({2, 5}, DType::kF64), w);
      },
      ThrowsMessage<Error>(HasSubstr("add_rms_norm: dtype mismatch, residual_in")));
  EXPECT_THAT([&] { add_rms_norm(x, x, w, -1.0); },
              ThrowsMessage<Error>(HasSubstr("add_rms_norm: eps must be >= 0")));
}

}  // namespace
}  // namespace kiln
