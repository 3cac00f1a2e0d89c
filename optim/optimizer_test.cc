// Tests for AdamW / SGD against plain f64 reference updates, clipping and the loss scaler.
#include "optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kiln::optim {
namespace {

nn::Parameter make_param(const std::string& name, std::vector<double> v, bool decay) {
  Tensor t = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  t.set_requires_grad(true);
  return {name, t, nn::ShardKind::kReplicated, decay};
}

TEST(AdamW, MatchesReferenceUpdateOverSteps) {
  auto w = make_param("w", {0.5, -1.0, 2.0}, true);
  auto b = make_param("b", {0.1, 0.2, 0.3}, false);
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  AdamW opt({w, b}, o);
  std::vector<double> pw = {0.5, -1.0, 2.0}, pb = {0.1, 0.2, 0.3}, mw(3), vw(3), mb(3), vb(3);
  const double lr = 1e-2;
  for (int t = 1; t <= 5; ++t) {
    std::vector<double> gw = {0.3 * t, -0.2, 0.05 * t * t}, gb = {1.0, -1.0, 0.5 / t};
    w.tensor.set_grad(Tensor::from_vector(gw, {3}));
    b.tensor.set_grad(Tensor::from_vector(gb, {3}));
    opt.step(lr);
    auto ref = [&](std::vector<double>& p, std::vector<double>& m, std::vector<double>& v,
                   const std::vector<double>& g, double wd) {
      for (int i = 0; i < 3; ++i) {
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
        double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.95, t));
        p[i] = p[i] * (1 - lr * wd) - lr * mh / (std::sqrt(vh) + 1e-8);
      }
    };
    ref(pw, mw, vw, gw, 0.1);
    ref(pb, mb, vb, gb, 0.0);  // no decay on the non-decay parameter
    auto got_w = w.tensor.to_vector(), got_b = b.tensor.to_vector();
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(got_w[i], pw[i], 1e-6) << "step " << t;  // f32 arithmetic vs f64 reference
      EXPECT_NEAR(got_b[i], pb[i], 1e-6) << "step " << t;
    }
  }
  EXPECT_EQ(opt.steps(), 5);
  EXPECT_EQ(opt.state().size(), 4u);
}

TEST(AdamW, SkipsParametersWithoutGradients) {
  auto w = make_param("w", {1.0}, true);
  AdamW opt({w}, {});
  opt.step(0.1);
  EXPECT_EQ(w.tensor.to_vector()[0], 1.0);
}

TEST(Sgd, MomentumMatchesReference) {
  auto w = make_param("w", {1.0, 2.0}, true);
  SGD opt({w}, 0.9, 0.0);
  double p0 = 1.0, buf = 0;
  for (int t = 0; t < 3; ++t) {
    w.tensor.set_grad(Tensor::from_vector({0.5, 0.5}, {2}));
    opt.step(0.1);
    buf = 0.9 * buf + 0.5;
    p0 -= 0.1 * buf;
  }
  EXPECT_NEAR(w.tensor.to_vector()[0], p0, 1e-6);
}

TEST(Clip, ScalesToMaxNormAndReportsTheOriginal) {
  auto a = make_param("a", {0, 0}, true), b = make_param("b", {0}, true);
  a.tensor.set_grad(Tensor::from_vector({3, 0}, {2}));
  b.tensor.set_grad(Tensor::from_vector({4}, {1}));
  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b}, 1.0), 5.0);
  EXPECT_NEAR(grad_norm({a, b}), 1.0, 1e-6);
  EXPECT_NEAR(a.tensor.grad().to_vector()[0], 0.6, 1e-6);
  // Under the limit: untouched.
  EXPECT_NEAR(clip_grad_norm({a, b}, 10.0), 1.0, 1e-6);
  EXPECT_NEAR(a.tensor.grad().to_vector()[0], 0.6, 1e-6);
}

TEST(LossScaler, BacksOffOnOverflowAndGrows) {
  LossScaler s(1024, 2, 2.0);
  auto p = make_param("p", {0}, true);
  p.tensor.set_grad(Tensor::from_vector({INFINITY}, {1}));
  EXPECT_TRUE(grads_non_finite({p}));
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_EQ(s.skipped(), 1);
}

}  // namespace
}  // namespace kiln::optim
