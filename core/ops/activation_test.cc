// Tests for gelu / silu / swiglu: values against the formulas in f64, shapes, gradients,
// determinism across thread counts, bf16, bad input.
#include "core/ops/activation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

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

double ref_gelu(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}
double ref_silu(double x) { return x / (1 + std::exp(-x)); }

std::vector<double> map(const std::vector<double>& v, double (*f)(double)) {
  std::vector<double> out;
  for (double x : v) out.push_back(f(x));
  return out;
}

TEST(Activation, ValuesByHand) {
  Tensor x = Tensor::from_vector({-3, -1, 0, 0.5, 1, 4}, {2, 3}, DType::kF64);
  std::vector<double> g = gelu(x).to_vector(), s = silu(x).to_vector();
  // Known values of the tanh approximation and of SiLU.
  EXPECT_NEAR(g[1], -0.15880800939172324, 1e-15);
  EXPECT_EQ(g[2], 0.0);
  EXPECT_NEAR(g[4], 0.8411919906082768, 1e-15);
  EXPECT_NEAR(s[4], 0.7310585786300049, 1e-15);
  EXPECT_EQ(s[2], 0.0);
  EXPECT_EQ(gelu(x).shape(), (Shape{2, 3}));
}

TEST(Activation, ThreeDimMatchesF64Reference) {
  const Shape sh = {2, 3, 4};
  Tensor x = randn64(sh, 1), u = randn64(sh, 2);
  const std::vector<double> xv = x.to_vector(), uv = u.to_vector();
  Tensor rg = Tensor::from_vector(map(xv, ref_gelu), sh, DType::kF64);
  Tensor rs = Tensor::from_vector(map(xv, ref_silu), sh, DType::kF64);
  std::vector<double> sw(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) sw[i] = ref_silu(xv[i]) * uv[i];
  Tensor rsw = Tensor::from_vector(sw, sh, DType::kF64);
  EXPECT_LE(testing::max_scaled_error(gelu(x), rg, 1e-15, 1e-14), 1.0);
  EXPECT_LE(testing::max_scaled_error(silu(x), rs, 1e-15, 1e-14), 1.0);
  EXPECT_LE(testing::max_scaled_error(swiglu(x, u), rsw, 1e-15, 1e-14), 1.0);
  Tensor x32 = x.to(DType::kF32), u32 = u.to(DType::kF32);
  EXPECT_EQ(gelu(x32).dtype(), DType::kF32);
  EXPECT_LE(testing::max_scaled_error(gelu(x32), rg, 1e-6, 1e-6), 1.0);
  EXPECT_LE(testing::max_scaled_error(silu(x32), rs, 1e-6, 1e-6), 1.0);
  EXPECT_LE(testing::max_scaled_error(swiglu(x32, u32), rsw, 1e-6, 1e-6), 1.0);
  // Non-contiguous input.
  Tensor xt = x.transpose(0, 2);
  EXPECT_TRUE(testing::bit_equal(gelu(xt), gelu(xt.contiguous())));
}

TEST(Activation, GradientsMatchFiniteDifferences) {
  Tensor x = randn64({2, 3, 5}, 3), u = randn64({2, 3, 5}, 4);
  testing::expect_gradcheck([](auto& v) { return gelu(v[0]); }, {x}, "gelu");
  testing::expect_gradcheck([](auto& v) { return silu(v[0]); }, {x}, "silu");
  testing::expect_gradcheck([](auto& v) { return swiglu(v[0], v[1]); }, {x, u}, "swiglu");
  // The tails, x in [-8, 8]. Their gradients are tiny (|gelu'(-6)| ~ 1e-6), where the default
  // step's round-off (~1e-16 |loss| / eps ~ 1e-9 absolute) reaches 1e-6 of the 1e-3 floor; a
  // step of 1e-5 cuts that 10x while its truncation error (~eps^2 |f'''| / 6) stays ~1e-11.
  Tensor tails = Tensor::from_vector({-8, -6, -4.5, -3, -2, 2, 3, 4.5, 6, 8}, {2, 5}, DType::kF64);
  testing::expect_gradcheck([](auto& v) { return gelu(v[0]); }, {tails}, "gelu_tails", 1e-5);
  testing::expect_gradcheck([](auto& v) { return silu(v[0]); }, {tails}, "silu_tails", 1e-5);
  testing::expect_gradcheck([](auto& v) { return swiglu(v[0], v[1]); }, {tails, randn64({2, 5}, 5)},
                            "swiglu_tails", 1e-5);
}

TEST(Activation, ThreadCountIndependent) {
  testing::expect_thread_count_independent([] {
    Tensor x = randn64({64, 1024}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor u = randn64({64, 1024}, 2).to(DType::kF32).set_requires_grad(true);
    Tensor gy = randn64({64, 1024}, 3).to(DType::kF32);
    Tensor g = gelu(x), s = swiglu(x, u);
    std::vector<Tensor> out = kiln::grad({g, s}, {gy, gy}, {x, u});
    out.push_back(g);
    out.push_back(s);
    out.push_back(silu(x));
    return out;
  });
}

TEST(Activation, Bf16ComputesInF32AndRounds) {
  Tensor x = randn64({3, 16}, 1).to(DType::kBF16), u = randn64({3, 16}, 2).to(DType::kBF16);
  Tensor x32 = x.to(DType::kF32), u32 = u.to(DType::kF32);
  EXPECT_TRUE(testing::bit_equal(gelu(x), gelu(x32).to(DType::kBF16)));
  EXPECT_TRUE(testing::bit_equal(silu(x), silu(x32).to(DType::kBF16)));
  EXPECT_TRUE(testing::bit_equal(swiglu(x, u), swiglu(x32, u32).to(DType::kBF16)));
  EXPECT_EQ(swiglu(x, u).dtype(), DType::kBF16);
  Tensor xl = x.detach().set_requires_grad(true), ul = u.detach().set_requires_grad(true);
  Tensor gy = randn64({3, 16}, 3).to(DType::kBF16);
  std::vector<Tensor> g = kiln::grad({swiglu(xl, ul)}, {gy}, {xl, ul});
  Tensor xl32 = x32.detach().set_requires_grad(true), ul32 = u32.detach().set_requires_grad(true);
  std::vector<Tensor> g32 = kiln::grad({swiglu(xl32, ul32)}, {gy.to(DType::kF32)}, {xl32, ul32});
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(g[i].dtype(), DType::kBF16);
    // Computed in f32 from bf16 inputs and rounded once: exactly the f32 result rounded.
    EXPECT_TRUE(testing::bit_equal(g[i], g32[i].to(DType::kBF16))) << "input " << i;
  }
}

// swiglu_packed(gu) against swiglu on gu's halves: the same bits forward and backward (d gu is
// [d gate | d up]), f64 / f32 / bf16, even and odd F, a leading shape of one and of two dims.
TEST(Activation, SwigluPackedEqualsSwigluOnTheHalvesBitForBit) {
  struct Case {
    Shape lead;
    int64_t f;
  };
  for (const Case& c : {Case{{5}, 8}, Case{{2, 3}, 7}, Case{{1}, 1}, Case{{3, 4}, 33}}) {
    for (DType dt : {DType::kF64, DType::kF32, DType::kBF16}) {
      Shape sh = c.lead, half = c.lead;
      sh.push_back(2 * c.f);
      half.push_back(c.f);
      const std::string tag = std::string(dtype_name(dt)) + " F=" + std::to_string(c.f);
      Tensor gu = randn64(sh, 11 + c.f).to(dt).set_requires_grad(true);
      Tensor gy = randn64(half, 12 + c.f).to(dt);
      Tensor y = swiglu_packed(gu);
      EXPECT_EQ(y.shape(), half) << tag;
      EXPECT_EQ(y.dtype(), dt) << tag;
      Tensor d_gu = kiln::grad({y}, {gy}, {gu})[0];
      Tensor gate = gu.detach().narrow(-1, 0, c.f).contiguous().set_requires_grad(true);
      Tensor up = gu.detach().narrow(-1, c.f, c.f).contiguous().set_requires_grad(true);
      Tensor want = swiglu(gate, up);
      std::vector<Tensor> dw = kiln::grad({want}, {gy}, {gate, up});
      EXPECT_TRUE(testing::bit_equal(y, want)) << tag;
      EXPECT_EQ(d_gu.shape(), sh) << tag;
      EXPECT_TRUE(testing::bit_equal(d_gu.narrow(-1, 0, c.f), dw[0])) << "d gate " << tag;
      EXPECT_TRUE(testing::bit_equal(d_gu.narrow(-1, c.f, c.f), dw[1])) << "d up " << tag;
    }
  }
}

TEST(Activation, SwigluPackedGradientMatchesFiniteDifferences) {
  testing::expect_gradcheck([](auto& v) { return swiglu_packed(v[0]); }, {randn64({2, 3, 10}, 6)},
                            "swiglu_packed");
  testing::expect_gradcheck([](auto& v) { return swiglu_packed(v[0]); }, {randn64({3, 14}, 7)},
                            "swiglu_packed_odd_f");
  // A non-contiguous input (the transpose of a (2F, R) tensor).
  testing::expect_gradcheck([](auto& v) { return swiglu_packed(v[0].transpose(0, 1)); },
                            {randn64({6, 4}, 8)}, "swiglu_packed_transposed");
}

TEST(Activation, SwigluPackedThreadCountIndependent) {
  testing::expect_thread_count_independent([] {
    Tensor gu = randn64({64, 2 * 999}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor gy = randn64({64, 999}, 3).to(DType::kF32);
    Tensor y = swiglu_packed(gu);
    std::vector<Tensor> out = kiln::grad({y}, {gy}, {gu});
    out.push_back(y);
    return out;
  });
}

TEST(Activation, BadInputIsAClearError) {
  EXPECT_THAT([] { gelu(Tensor::zeros({2}, DType::kI32)); },
              ThrowsMessage<Error>(HasSubstr("gelu: x must be a floating tensor")));
  EXPECT_THAT([] { silu(Tensor::zeros({2}, DType::kF8E4M3)); },
              ThrowsMessage<Error>(HasSubstr("silu: x must be a floating tensor")));
  EXPECT_THAT(
      [] {
        swiglu(Tensor::zeros({2, 3}), Tensor::zeros({3, 2}));
      },
      ThrowsMessage<Error>(HasSubstr("swiglu: gate f32[2, 3] cpu and up f32[3, 2] cpu "
                                     "must have the same shape")));
  EXPECT_THAT([] { swiglu(Tensor::zeros({2}), Tensor::zeros({2}, DType::kBF16)); },
              ThrowsMessage<Error>(HasSubstr("swiglu: dtype mismatch, up is bf16")));
  EXPECT_THAT([] { swiglu(Tensor::zeros({2}), Tensor()); },
              ThrowsMessage<Error>(HasSubstr("swiglu: up is an undefined tensor")));
  EXPECT_THAT(
      [] {
        swiglu_packed(Tensor::zeros({2, 3}));
      },
      ThrowsMessage<Error>(HasSubstr("swiglu_packed: gu must be (..., 2F), got")));
  EXPECT_THAT([] { swiglu_packed(Tensor::zeros({2}, DType::kI32)); },
              ThrowsMessage<Error>(HasSubstr("swiglu_packed: gu must be a floating tensor")));
  Tensor xc = testing::fake_cuda_tensor({2, 3});
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in activation_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { gelu(xc); }, ThrowsMessage<Error>(HasSubstr("gelu: x is on cuda:0 but")));
    EXPECT_THAT([&] { swiglu(xc, xc); },
                ThrowsMessage<Error>(HasSubstr("swiglu: gate is on cuda:0 but")));
  }
}

}  // namespace
}  // namespace kiln
