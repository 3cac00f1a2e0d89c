// CPU tests of the residual-fusion ops (issue 17): linear_add and mlp_gelu with a residual against
// linear / mlp_gelu then add (values and every gradient bit for bit in f32 / bf16 / f64, f64
// finite differences); rms_norm_with_skip and layer_norm_with_skip against the norm plus a second
// use of x (the same bits), with the gradient arriving through both outputs, only through the
// skip, only through the norm, and finite differences; clear errors for a bad residual.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/op_test_util.h"
#include "core/ops/rmsnorm.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// f and g on leaves made from `in` (floating, requiring grad): the outputs and every input's
// gradient (for the upstream gradient r) must have the same bits. An input one side leaves
// without a gradient must get zeros from the other (the norm-with-skip op gives its weight a zero
// gradient when only the skip output is used, where the norm alone is not in the graph at all).
void expect_same_values_and_grads(const Fn& f, const Fn& g, const std::vector<Tensor>& in,
                                  const std::string& what) {
  auto run = [&](const Fn& fn, std::vector<Tensor>* grads) {
    std::vector<Tensor> leaves;
    for (const Tensor& t : in) leaves.push_back(t.detach().set_requires_grad(true));
    Tensor y = fn(leaves);
    Tensor r = randn64(y.shape(), 99).to(y.dtype());
    *grads = kiln::grad({y}, {r}, leaves);
    return y;
  };
  std::vector<Tensor> gf, gg;
  Tensor yf = run(f, &gf), yg = run(g, &gg);
  EXPECT_TRUE(testing::bit_equal(yf, yg)) << what << ": values";
  ASSERT_EQ(gf.size(), gg.size());
  for (size_t i = 0; i < gf.size(); ++i) {
    if (!gf[i].defined() || !gg[i].defined()) {
      const Tensor& d = gf[i].defined() ? gf[i] : gg[i];
      if (d.defined())
        EXPECT_TRUE(testing::bit_equal(d, Tensor::zeros(d.shape(), d.dtype())))
            << what << ": gradient of input " << i << " (one side has none)";
      continue;
    }
    EXPECT_TRUE(testing::bit_equal(gf[i], gg[i])) << what << ": gradient of input " << i;
  }
}

TEST(LinearAdd, CpuEqualsLinearThenAdd) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (bool bias : {true, false}) {
      const std::string what = std::string(dtype_name(dt)) + (bias ? " bias" : " no bias");
      std::vector<Tensor> in = {randn64({2, 3, 8}, 1).to(dt), randn64({5, 8}, 2).to(dt),
                                randn64({2, 3, 5}, 3).to(dt)};
      if (bias) in.push_back(randn64({5}, 4).to(dt));
      auto b = [bias](const std::vector<Tensor>& v) { return bias ? v[3] : Tensor(); };
      expect_same_values_and_grads(
          [&](const std::vector<Tensor>& v) { return linear_add(v[0], v[1], b(v), v[2]); },
          [&](const std::vector<Tensor>& v) { return add(v[2], linear(v[0], v[1], b(v))); }, in,
          "linear_add " + what);
    }
  }
}

TEST(LinearAdd, GradientsMatchFiniteDifferences) {
  testing::expect_gradcheck(
      [](auto& v) { return linear_add(v[0], v[1], v[2], v[3]); },
      {randn64({2, 3, 6}, 5), randn64({4, 6}, 6), randn64({4}, 7), randn64({2, 3, 4}, 8)},
      "x_w_b_residual");
  testing::expect_gradcheck([](auto& v) { return linear_add(v[0], v[1], Tensor(), v[2]); },
                            {randn64({5, 6}, 9), randn64({3, 6}, 10), randn64({5, 3}, 11)},
                            "x_w_residual");
}

TEST(MlpGelu, ResidualEqualsMlpThenAdd) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    std::vector<Tensor> in = {randn64({2, 3, 8}, 21).to(dt), randn64({12, 8}, 22).to(dt),
                              randn64({12}, 23).to(dt),      randn64({8, 12}, 24).to(dt),
                              randn64({8}, 25).to(dt),       randn64({2, 3, 8}, 26).to(dt)};
    expect_same_values_and_grads(
        [](const std::vector<Tensor>& v) { return mlp_gelu(v[0], v[1], v[2], v[3], v[4], v[5]); },
        [](const std::vector<Tensor>& v) {
          return add(v[5], mlp_gelu(v[0], v[1], v[2], v[3], v[4]));
        },
        in, std::string("mlp_gelu ") + dtype_name(dt));
  }
  testing::expect_gradcheck([](auto& v) { return mlp_gelu(v[0], v[1], v[2], v[3], v[4], v[5]); },
                            {randn64({3, 5}, 31), randn64({7, 5}, 32), randn64({7}, 33),
                             randn64({4, 7}, 34), randn64({4}, 35), randn64({3, 4}, 36)},
                            "mlp_x_w1_b1_w2_b2_residual");
}

TEST(LinearAdd, BadResidualIsAClearError) {
  Tensor x = Tensor::zeros({2, 3}), w = Tensor::zeros({4, 3});
  EXPECT_THAT(
      [&] {
        linear_add(x, w, Tensor(), Tensor::zeros({2, 3}));
      },
      ThrowsMessage<Error>(HasSubstr("linear_add: residual f32[2, 3] cpu must have the "
                                     "result's shape [2, 4]")));
  EXPECT_THAT(
      [&] {
        linear_add(x, w, Tensor(), Tensor::zeros({2, 4}, DType::kF64));
      },
      ThrowsMessage<Error>(HasSubstr("linear_add")));
  EXPECT_THAT(
      [&] {
        mlp_gelu(x, Tensor::zeros({5, 3}), Tensor(), Tensor::zeros({3, 5}), Tensor(),
                 Tensor::zeros({2, 4}));
      },
      ThrowsMessage<Error>(HasSubstr("mlp_gelu: residual f32[2, 4] cpu must have the result's")));
}

// The norm-with-skip op under test: {through, y} of x, w (and bias).
using SkipFn = std::function<std::pair<Tensor, Tensor>(const std::vector<Tensor>&)>;

struct SkipCase {
  std::string name;
  SkipFn fused;
  Fn norm;  // the plain norm of v[0]
  int n_inputs;
};

std::vector<SkipCase> skip_cases() {
  return {
      {"rms_norm",
       [](const std::vector<Tensor>& v) { return rms_norm_with_skip(v[0], v[1], 1e-5); },
       [](const std::vector<Tensor>& v) { return rms_norm(v[0], v[1], 1e-5); }, 2},
      {"layer_norm",
       [](const std::vector<Tensor>& v) { return layer_norm_with_skip(v[0], v[1], v[2], 1e-5); },
       [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2], 1e-5); }, 3},
      {"layer_norm no bias",
       [](const std::vector<Tensor>& v) {
         return layer_norm_with_skip(v[0], v[1], Tensor(), 1e-5);
       },
       [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], Tensor(), 1e-5); }, 2},
  };
}

std::vector<Tensor> skip_inputs(const SkipCase& c, DType dt, const Shape& s = {3, 4, 16}) {
  std::vector<Tensor> in = {randn64(s, 41).to(dt), randn64({s.back()}, 42).to(dt)};
  if (c.n_inputs == 3) in.push_back(randn64({s.back()}, 43).to(dt));
  return in;
}

TEST(NormWithSkip, ThroughIsXAndYIsTheNorm) {
  for (const SkipCase& c : skip_cases()) {
    std::vector<Tensor> in = skip_inputs(c, DType::kF32);
    auto [through, y] = c.fused(in);
    EXPECT_EQ(through.storage(), in[0].storage()) << c.name << ": through is not an alias of x";
    EXPECT_TRUE(testing::bit_equal(through, in[0])) << c.name;
    EXPECT_TRUE(testing::bit_equal(y, c.norm(in))) << c.name;
  }
}

// Upstream gradients into both outputs, only through, only y: each input's gradient has the bits
// of the unfused graph (x read by the norm and, as itself, by the skip path).
TEST(NormWithSkip, GradientsEqualNormPlusSkipBitForBit) {
  for (const SkipCase& c : skip_cases()) {
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
      for (int mode : {0, 1, 2}) {  // 0: both outputs, 1: only through, 2: only y
        const std::string what = c.name + " " + dtype_name(dt) + " mode " + std::to_string(mode);
        // The loss reads through as 0.75 * through and y as y * r (mode picks which).
        auto loss = [mode](const Tensor& through, const Tensor& y) {
          Tensor r = randn64(y.shape(), 44).to(y.dtype());
          if (mode == 1) return scale(through, 0.75);
          if (mode == 2) return mul(y, r);
          return add(scale(through, 0.75), mul(y, r));
        };
        expect_same_values_and_grads(
            [&](const std::vector<Tensor>& v) {
              auto [through, y] = c.fused(v);
              return loss(through, y);
            },
            [&](const std::vector<Tensor>& v) { return loss(v[0], c.norm(v)); }, skip_inputs(c, dt),
            what);
      }
    }
  }
}

TEST(NormWithSkip, GradientsMatchFiniteDifferences) {
  for (const SkipCase& c : skip_cases()) {
    testing::expect_gradcheck(
        [&c](auto& v) {
          auto [through, y] = c.fused(v);
          return add(y, scale(through, 0.37));
        },
        skip_inputs(c, DType::kF64, {2, 3, 6}), "both_" + c.name);
    testing::expect_gradcheck([&c](auto& v) { return scale(c.fused(v).first, 0.37); },
                              skip_inputs(c, DType::kF64, {2, 3, 6}), "through_only_" + c.name);
  }
}

TEST(NormWithSkip, WithoutGradThroughIsXItself) {
  Tensor x = randn64({2, 8}, 51), w = randn64({8}, 52);
  auto [through, y] = rms_norm_with_skip(x, w);
  EXPECT_TRUE(through.same(x));
  auto [t2, y2] = layer_norm_with_skip(x, w, w);
  EXPECT_TRUE(t2.same(x));
  EXPECT_THAT([&] { rms_norm_with_skip(x, Tensor::zeros({7}, DType::kF64)); },
              ThrowsMessage<Error>(HasSubstr("rms_norm_with_skip: weight must have shape [8]")));
}

}  // namespace
}  // namespace kiln
