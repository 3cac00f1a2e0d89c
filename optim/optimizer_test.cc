// Tests for AdamW / SGD against plain f64 reference updates, clipping and the loss scaler.
#include "optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kiln::optim {
namespace {

nn::Parameter make_param(const std::string& name, std::vector<double> v, bool decay) {
  Tensor t = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  t.set_requires_grad(true);
  return {name, t, decay};
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

// step_scaled(lr, s) is the step on gradients multiplied by s (the Trainer passes the clipping
// factor): the same parameters and moments as scale_grads then step, other moments than the plain
// step.
TEST(AdamW, StepScaledEqualsScalingTheGradientsFirst) {
  auto a = make_param("w", {1.0, -2.0, 3.0}, true), b = make_param("w", {1.0, -2.0, 3.0}, true);
  auto c = make_param("w", {1.0, -2.0, 3.0}, true);
  AdamW oa({a}, {}), ob({b}, {}), oc({c}, {});
  for (int t = 1; t <= 3; ++t) {
    for (auto* p : {&a, &b, &c})
      p->tensor.set_grad(Tensor::from_vector({0.5 * t, -0.25, 2.0}, {3}).to(DType::kF32));
    scale_grads({a}, 0.3);
    oa.step(0.1);
    ob.step_scaled(0.1, 0.3);
    oc.step(0.1);
  }
  EXPECT_EQ(a.tensor.to_vector(), b.tensor.to_vector());
  // Adam's update hardly sees a common factor (m / sqrt(v)); the first moment does.
  EXPECT_EQ(oa.state()[0].second.to_vector(), ob.state()[0].second.to_vector());
  EXPECT_EQ(oa.state()[1].second.to_vector(), ob.state()[1].second.to_vector());
  EXPECT_NE(oa.state()[0].second.to_vector(), oc.state()[0].second.to_vector());
}

// The fused 16-bit parameter copies are a GPU path: on the CPU AdamW and SGD refuse them, keep
// nothing and never report them written, so the trainer casts as before.
TEST(AdamW, RefusesParamCopiesOnTheCpu) {
  auto w = make_param("w", {0.5, -1.0, 2.0}, true);
  AdamW adamw({w}, AdamWOptions{});
  SGD sgd({w}, 0.9, 0.0);
  const Tensor h = Tensor::zeros({3}, DType::kBF16);
  EXPECT_FALSE(adamw.set_param_copies({h}));
  EXPECT_FALSE(sgd.set_param_copies({h}));
  w.tensor.set_grad(Tensor::from_vector({0.1, 0.2, 0.3}, {3}));
  adamw.step(1e-2);
  sgd.step(1e-2);
  EXPECT_FALSE(adamw.last_step_wrote_copies());
  EXPECT_FALSE(sgd.last_step_wrote_copies());
}

// KILN_OVERLAP_OPTIM's grouped step on a side stream is a GPU path too: on the CPU both refuse it
// and leave the parameter, its gradient and the step count untouched (the trainer then steps as
// before).
TEST(AdamW, RefusesTheGroupedStepOnTheCpu) {
  auto w = make_param("w", {0.5, -1.0, 2.0}, true);
  w.tensor.set_grad(Tensor::from_vector({0.25, 0.5, -0.125}, {3}));
  AdamW adamw({w}, AdamWOptions{});
  SGD sgd({w}, 0.9, 0.0);
  int done = 0;
  int stream = 0;  // any non-null pointer: it is never used
  for (Optimizer* o : {static_cast<Optimizer*>(&adamw), static_cast<Optimizer*>(&sgd)})
    EXPECT_FALSE(o->step_grouped(1e-2, 1.0, {0}, 1, &stream, true, [&](int) { ++done; }));
  EXPECT_EQ(done, 0);
  EXPECT_EQ(adamw.steps(), 0);
  EXPECT_EQ(w.tensor.to_vector(), (std::vector<double>{0.5, -1.0, 2.0}));
  EXPECT_EQ(w.tensor.grad().to_vector(), (std::vector<double>{0.25, 0.5, -0.125}));
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

TEST(Sgd, WeightDecayAndNesterovMatchReference) {
  // PyTorch's SGD: d = g + wd * p; buf = mu * buf + d; p -= lr * (nesterov ? d + mu * buf : buf).
  for (bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "heavy ball");
    auto w = make_param("w", {1.0, -2.0}, true);
    SGD opt({w}, 0.8, 0.1, nesterov);
    double p[2] = {1.0, -2.0}, buf[2] = {0, 0};
    const double g[3][2] = {{0.5, -0.25}, {-1.0, 0.75}, {0.125, 2.0}};
    for (int t = 0; t < 3; ++t) {
      w.tensor.set_grad(Tensor::from_vector({g[t][0], g[t][1]}, {2}));
      opt.step(0.1);
      for (int i = 0; i < 2; ++i) {
        const double d = g[t][i] + 0.1 * p[i];
        buf[i] = 0.8 * buf[i] + d;
        p[i] -= 0.1 * (nesterov ? d + 0.8 * buf[i] : buf[i]);
      }
    }
    std::vector<double> got = w.tensor.to_vector();
    EXPECT_NEAR(got[0], p[0], 1e-6);
    EXPECT_NEAR(got[1], p[1], 1e-6);
  }
  // The two differ: Nesterov is not silently the heavy-ball update.
  auto a = make_param("a", {1.0}, true), b = make_param("b", {1.0}, true);
  SGD heavy({a}, 0.9, 0.0, false), nest({b}, 0.9, 0.0, true);
  for (int t = 0; t < 2; ++t) {
    a.tensor.set_grad(Tensor::from_vector({1.0}, {1}));
    b.tensor.set_grad(Tensor::from_vector({1.0}, {1}));
    heavy.step(0.1);
    nest.step(0.1);
  }
  EXPECT_GT(std::fabs(a.tensor.item() - b.tensor.item()), 0.05);
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

TEST(LossScaler, GrowthAndBackoffAreSeparateFactors) {
  LossScaler s(1024, 3, 4.0, 0.125);  // precision.loss_scale_growth / loss_scale_backoff
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 128);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_EQ(s.good_steps(), 0);
}

}  // namespace
}  // namespace kiln::optim
