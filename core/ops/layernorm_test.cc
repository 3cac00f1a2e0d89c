// Tests for layer_norm: values by hand and against an f64 reference, shapes, gradients (x, weight,
// bias), determinism across thread counts, bf16, bad input; add_layer_norm (the fused residual
// step) against add + layer_norm and finite differences.
#include "core/ops/layernorm.h"

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

// f64 reference over the last dim; b may be empty.
std::vector<double> ref_layer_norm(const std::vector<double>& x, int64_t c,
                                   const std::vector<double>& w, const std::vector<double>& b,
                                   double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / c; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < c; ++j) m += x[r * c + j] / c;
    for (int64_t j = 0; j < c; ++j) v += (x[r * c + j] - m) * (x[r * c + j] - m) / c;
    for (int64_t j = 0; j < c; ++j)
      y[r * c + j] = (x[r * c + j] - m) / std::sqrt(v + eps) * w[j] + (b.empty() ? 0.0 : b[j]);
  }
  return y;
}

TEST(LayerNorm, ValuesByHand) {
  // Row [1, 2, 3, 4]: mean 2.5, biased variance 1.25.
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {1, 4}, DType::kF64);
  Tensor w = Tensor::from_vector({1, 2, 1, 1}, {4}, DType::kF64);
  Tensor b = Tensor::from_vector({0, 0, 1, 0}, {4}, DType::kF64);
  const double r = 1 / std::sqrt(1.25);
  std::vector<double> y = layer_norm(x, w, b, 0.0).to_vector();
  std::vector<double> want = {-1.5 * r, -0.5 * r * 2, 0.5 * r + 1, 1.5 * r};
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(y[j], want[j], 1e-15) << j;
  // A constant row normalises to 0 (eps keeps it finite), leaving the bias.
  Tensor c = Tensor::full({2, 4}, 3.0);
  EXPECT_EQ(layer_norm(c, Tensor::full({4}, 1.0), Tensor::full({4}, 0.5)).to_vector(),
            std::vector<double>(8, 0.5));
}

TEST(LayerNorm, ThreeDimMatchesF64Reference) {
  const Shape s = {2, 3, 5};
  Tensor x = randn64(s, 1), w = randn64({5}, 2), b = randn64({5}, 3);
  std::vector<double> ref = ref_layer_norm(x.to_vector(), 5, w.to_vector(), b.to_vector(), 1e-5);
  Tensor y = layer_norm(x, w, b);
  EXPECT_EQ(y.shape(), s);
  EXPECT_EQ(y.dtype(), DType::kF64);
  Tensor r = Tensor::from_vector(ref, s, DType::kF64);
  EXPECT_LE(testing::max_scaled_error(y, r, 1e-14, 1e-13), 1.0);
  // f32 against the same f64 reference (f32 rounding of inputs, math and output).
  Tensor y32 = layer_norm(x.to(DType::kF32), w.to(DType::kF32), b.to(DType::kF32));
  EXPECT_EQ(y32.dtype(), DType::kF32);
  EXPECT_LE(testing::max_scaled_error(y32, r, 1e-5, 1e-5), 1.0);
  // No bias; a non-default eps; a non-contiguous x.
  std::vector<double> ref_nb = ref_layer_norm(x.to_vector(), 5, w.to_vector(), {}, 0.1);
  EXPECT_LE(testing::max_scaled_error(layer_norm(x, w, Tensor(), 0.1),
                                      Tensor::from_vector(ref_nb, s, DType::kF64), 1e-14, 1e-13),
            1.0);
  Tensor xt = randn64({5, 4}, 4).transpose(0, 1);  // (4, 5), not contiguous
  std::vector<double> ref_t =
      ref_layer_norm(xt.contiguous().to_vector(), 5, w.to_vector(), b.to_vector(), 1e-5);
  EXPECT_LE(
      testing::max_scaled_error(layer_norm(xt, w, b),
                                Tensor::from_vector(ref_t, {4, 5}, DType::kF64), 1e-14, 1e-13),
      1.0);
}

TEST(LayerNorm, GradientsMatchFiniteDifferences) {
  Tensor x = randn64({2, 3, 5}, 5), w = randn64({5}, 6), b = randn64({5}, 7);
  testing::expect_gradcheck([](auto& v) { return layer_norm(v[0], v[1], v[2]); }, {x, w, b},
                            "x_w_b");
  testing::expect_gradcheck([](auto& v) { return layer_norm(v[0], v[1], Tensor(), 0.5); }, {x, w},
                            "x_w_nobias_eps0.5");
  testing::expect_gradcheck([](auto& v) { return layer_norm(v[0], v[1], v[2]); },
                            {randn64({7}, 8), randn64({7}, 9), randn64({7}, 10)}, "1d");
}

TEST(LayerNorm, ThreadCountIndependent) {
  testing::expect_thread_count_independent([] {
    Tensor x = randn64({512, 256}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor w = randn64({256}, 2).to(DType::kF32).set_requires_grad(true);
    Tensor b = randn64({256}, 3).to(DType::kF32).set_requires_grad(true);
    Tensor y = layer_norm(x, w, b);
    std::vector<Tensor> out = kiln::grad({y}, {randn64({512, 256}, 4).to(DType::kF32)}, {x, w, b});
    out.push_back(y);
    return out;
  });
}

TEST(LayerNorm, Bf16ComputesInF32AndRounds) {
  Tensor x = randn64({4, 32}, 1).to(DType::kBF16), w = randn64({32}, 2).to(DType::kBF16),
         b = randn64({32}, 3).to(DType::kBF16);
  Tensor y = layer_norm(x, w, b);
  EXPECT_EQ(y.dtype(), DType::kBF16);
  Tensor y32 = layer_norm(x.to(DType::kF32), w.to(DType::kF32), b.to(DType::kF32));
  EXPECT_TRUE(testing::bit_equal(y, y32.to(DType::kBF16)));
  // Gradients come back in bf16, close to the f32 ones (bf16 keeps 8 significant bits).
  Tensor gy = randn64({4, 32}, 4).to(DType::kBF16);
  std::vector<Tensor> leaves = {x.detach().set_requires_grad(true),
                                w.detach().set_requires_grad(true),
                                b.detach().set_requires_grad(true)};
  std::vector<Tensor> g = kiln::grad({layer_norm(leaves[0], leaves[1], leaves[2])}, {gy}, leaves);
  std::vector<Tensor> l32;
  for (auto& l : leaves) l32.push_back(l.detach().to(DType::kF32).set_requires_grad(true));
  std::vector<Tensor> g32 =
      kiln::grad({layer_norm(l32[0], l32[1], l32[2])}, {gy.to(DType::kF32)}, l32);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(g[i].dtype(), DType::kBF16);
    EXPECT_LE(testing::max_scaled_error(g[i], g32[i], 1e-2, 1e-2), 1.0) << "input " << i;
  }
}

TEST(LayerNorm, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 5}), w = Tensor::zeros({5}), b = Tensor::zeros({5});
  EXPECT_THAT([&] { layer_norm(x, Tensor::zeros({4}), b); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: weight must have shape [5]")));
  EXPECT_THAT(
      [&] {
        layer_norm(x, w, Tensor::zeros({1, 5}));
      },
      ThrowsMessage<Error>(HasSubstr("layer_norm: bias must have shape [5]")));
  EXPECT_THAT(
      [&] {
        layer_norm(Tensor::zeros({2, 5}, DType::kI32), w, b);
      },
      ThrowsMessage<Error>(HasSubstr("layer_norm: x must be a floating tensor")));
  EXPECT_THAT([&] { layer_norm(x, Tensor::zeros({5}, DType::kF64), b); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: dtype mismatch, weight is f64")));
  EXPECT_THAT([&] { layer_norm(x, w, Tensor::zeros({5}, DType::kBF16)); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: dtype mismatch, bias is bf16")));
  EXPECT_THAT([&] { layer_norm(x, Tensor(), b); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: weight is an undefined tensor")));
  EXPECT_THAT([&] { layer_norm(Tensor::scalar(1.0), w, b); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: x must have at least 1 dim")));
  EXPECT_THAT([&] { layer_norm(x, w, b, -1.0); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: eps must be >= 0")));
  Tensor xc = testing::fake_cuda_tensor({2, 5}), wc = testing::fake_cuda_tensor({5});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in layernorm_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { layer_norm(xc, wc); },
                ThrowsMessage<Error>(HasSubstr("layer_norm: x is on cuda:0 but")));
  }
  EXPECT_THAT([&] { layer_norm(xc, w); },
              ThrowsMessage<Error>(HasSubstr("layer_norm: device mismatch, weight is")));
}

TEST(AddLayerNorm, CpuEqualsAddThenLayerNorm) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    Tensor x = randn64({3, 4, 16}, 11).to(dt), r = randn64({3, 4, 16}, 12).to(dt);
    Tensor w = randn64({16}, 13).to(dt), b = randn64({16}, 14).to(dt);
    auto [sum, y] = add_layer_norm(x, r, w, b, 1e-5);
    Tensor want_sum = add(x, r);
    EXPECT_TRUE(testing::bit_equal(sum, want_sum)) << dtype_name(dt);
    EXPECT_TRUE(testing::bit_equal(y, layer_norm(want_sum, w, b, 1e-5))) << dtype_name(dt);
    auto [sum_nb, y_nb] = add_layer_norm(x, r, w);
    EXPECT_TRUE(testing::bit_equal(y_nb, layer_norm(want_sum, w))) << dtype_name(dt);
  }
}

TEST(AddLayerNorm, GradientsOfBothOutputsMatchFiniteDifferences) {
  // Both outputs feed the checked function with different weights, so a wrong gradient through
  // either the residual stream or the normalised branch shows.
  Tensor x = randn64({2, 3, 6}, 15), r = randn64({2, 3, 6}, 16), w = randn64({6}, 17),
         b = randn64({6}, 18);
  testing::expect_gradcheck(
      [](auto& v) {
        auto [sum, y] = add_layer_norm(v[0], v[1], v[2], v[3]);
        return add(y, scale(sum, 0.37));
      },
      {x, r, w, b}, "x_r_w_b");
  testing::expect_gradcheck(
      [](auto& v) {
        auto [sum, y] = add_layer_norm(v[0], v[1], v[2], Tensor(), 0.25);
        return add(scale(y, -1.3), sum);
      },
      {x, r, w}, "x_r_w_nobias");
}

TEST(AddLayerNorm, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 5}), w = Tensor::zeros({5});
  EXPECT_THAT(
      [&] {
        add_layer_norm(x, Tensor::zeros({2, 4}), w);
      },
      ThrowsMessage<Error>(HasSubstr("add_layer_norm: residual_in f32[2, 4] cpu must "
                                     "have the shape of x f32[2, 5] cpu")));
  EXPECT_THAT(
      [&] {
        add_layer_norm(x, Tensor::zeros({2, 5}, DType::kBF16), w);
      },
      ThrowsMessage<Error>(HasSubstr("add_layer_norm: dtype mismatch, residual_in")));
  EXPECT_THAT([&] { add_layer_norm(x, x, Tensor::zeros({4})); },
              ThrowsMessage<Error>(HasSubstr("add_layer_norm: weight must have shape [5]")));
  EXPECT_THAT([&] { add_layer_norm(x, Tensor(), w); },
              ThrowsMessage<Error>(HasSubstr("add_layer_norm: residual_in is an undefined")));
}

}  // namespace
}  // namespace kiln
