// Tests for the GPT-2 / Llama stacks: a 2-block model's gradients against f64 central finite
// differences, activation recompute (full and selective) bit-identical to none, parameter names and
// counts, GPT-2 initialisation statistics, and clear errors for bad input.
#include "models/transformer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/rope.h"
#include "core/testing/gradcheck.h"
#include "models/model_test_util.h"
#include "models/presets.h"

namespace kiln::models {
namespace {

ModelSpec tiny(Family f) { return test_util::tiny_spec(f); }

void make_batch(int64_t vocab, Tensor* ids, Tensor* targets, uint64_t seed = 5) {
  Generator g(seed);
  *ids = randint({2, 7}, g, vocab, DType::kI32);
  *targets = randint({2, 7}, g, vocab, DType::kI32);
}

// Central differences on a deterministic subset of each parameter's elements.
void check_gradients(Family fam) {
  ModelSpec s = tiny(fam);
  s.param_dtype = DType::kF64;
  auto model = build_model(s, 11);
  model->set_compute_dtype(DType::kF64);
  Tensor ids, targets;
  make_batch(s.vocab_size, &ids, &targets);
  model->loss(ids, targets).backward();
  // Step 1e-5: round-off in the loss (~1e-16 * |loss| / eps) dominates at 1e-6 for the smallest
  // gradients, while the truncation error (~eps^2) stays far below the tolerance.
  const double eps = 1e-5, floor = 1e-3;
  double worst = 0;
  std::string where;
  int checked = 0;
  for (const nn::Parameter& p : model->parameters()) {
    Tensor g = p.tensor.grad();
    ASSERT_TRUE(g.defined()) << p.name << " got no gradient";
    std::vector<double> an = g.to_vector();
    double* data = p.tensor.data<double>();
    const int64_t n = p.tensor.numel(), stride = std::max<int64_t>(1, n / 12);
    for (int64_t j = 0; j < n; j += stride) {
      const double orig = data[j];
      NoGradGuard ng;
      data[j] = orig + eps;
      const double fp = model->loss(ids, targets).item();
      data[j] = orig - eps;
      const double fm = model->loss(ids, targets).item();
      data[j] = orig;
      const double num = (fp - fm) / (2 * eps);
      const double rel =
          std::fabs(an[j] - num) / std::max({std::fabs(an[j]), std::fabs(num), floor});
      if (rel > worst) {
        worst = rel;
        where = p.name + "[" + std::to_string(j) + "] analytic " + std::to_string(an[j]) +
                " numeric " + std::to_string(num);
      }
      ++checked;
    }
  }
  std::printf("finite-difference check: %d elements, max rel error %.3g (%s)\n", checked, worst,
              where.c_str());
  EXPECT_GT(checked, 100);
  EXPECT_LE(worst, 1e-6) << where;
}

TEST(Transformer, Gpt2TwoBlockGradientsMatchFiniteDifferences) { check_gradients(Family::kGPT2); }
TEST(Transformer, LlamaTwoBlockGradientsMatchFiniteDifferences) { check_gradients(Family::kLlama); }

// Gradients of every parameter after one backward with the given recompute policy.
std::vector<Tensor> grads_with(Family fam, Recompute rc, double dropout) {
  ModelSpec s = tiny(fam);
  s.dropout = dropout;
  auto model = build_model(s, 3);
  model->set_recompute(rc);
  Tensor ids, targets;
  make_batch(s.vocab_size, &ids, &targets);
  Tensor loss = model->loss(ids, targets);
  loss.backward();
  std::vector<Tensor> out{loss.detach()};
  for (const nn::Parameter& p : model->parameters()) out.push_back(p.tensor.grad());
  return out;
}

TEST(Transformer, RecomputeGradientsAreBitIdentical) {
  for (Family fam : {Family::kGPT2, Family::kLlama}) {
    for (double p : {0.0, 0.1}) {
      auto base = grads_with(fam, Recompute::kNone, p);
      for (Recompute rc : {Recompute::kFull, Recompute::kSelective}) {
        auto got = grads_with(fam, rc, p);
        ASSERT_EQ(got.size(), base.size());
        for (size_t i = 0; i < base.size(); ++i)
          EXPECT_TRUE(testing::bit_equal(got[i], base[i]))
              << "family " << static_cast<int>(fam) << " dropout " << p << " policy "
              << static_cast<int>(rc) << " tensor " << i;
      }
    }
  }
}

// RoPE's backward lays out the gradient of q and k in the projections' (B, T, H, D) memory (so
// split_heads' backward is a view) or contiguously: the same bits either way, with and without
// recompute.
TEST(Transformer, RopeGradientLayoutLeavesGradientsUnchanged) {
  struct Reset {
    ~Reset() { set_rope_grad_layout_override(-1); }
  } reset;
  for (Recompute rc : {Recompute::kNone, Recompute::kSelective}) {
    set_rope_grad_layout_override(0);
    auto base = grads_with(Family::kLlama, rc, 0.0);
    set_rope_grad_layout_override(1);
    auto got = grads_with(Family::kLlama, rc, 0.0);
    ASSERT_EQ(got.size(), base.size());
    for (size_t i = 0; i < base.size(); ++i)
      EXPECT_TRUE(testing::bit_equal(got[i], base[i]))
          << "recompute " << static_cast<int>(rc) << " tensor " << i;
  }
}

TEST(Transformer, HuggingFaceParameterNames) {
  auto gpt = build_model(tiny(Family::kGPT2), 1);
  std::vector<std::string> names;
  for (auto& p : gpt->parameters()) names.push_back(p.name);
  EXPECT_THAT(names, ::testing::IsSupersetOf({"wte.weight", "wpe.weight", "h.0.ln_1.weight",
                                              "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias",
                                              "ln_f.bias"}));
  auto llama = build_model(tiny(Family::kLlama), 1);
  names.clear();
  for (auto& p : llama->parameters()) names.push_back(p.name);
  EXPECT_THAT(names,
              ::testing::IsSupersetOf({"embed_tokens.weight", "layers.0.self_attn.k_proj.weight",
                                       "layers.1.mlp.gate_proj.weight",
                                       "layers.1.post_attention_layernorm.weight", "norm.weight",
                                       "lm_head.weight"}));
}

// KILN_OVERLAP_OPTIM groups the parameters in registration order (nn::PrecastCache) and relies on
// it being the order in which the forward first reads them: embeddings, block 0, 1, ..., the
// final norm, the head (a parameter read before its group's turn only makes the forward wait
// longer, but the overlap would be lost).
TEST(Transformer, ParametersComeInTheForwardsOrder) {
  for (Family f : {Family::kGPT2, Family::kLlama}) {
    const bool gpt2 = f == Family::kGPT2;
    ModelSpec s = tiny(f);
    auto model = build_model(s, 3);
    std::vector<std::string> names;
    for (const nn::Parameter& p : model->parameters()) names.push_back(p.name);
    ASSERT_GE(names.size(), 4u);
    EXPECT_EQ(names[0], gpt2 ? "wte.weight" : "embed_tokens.weight");
    if (gpt2) EXPECT_EQ(names[1], "wpe.weight");
    const std::string block = gpt2 ? "h." : "layers.";
    int last_block = -1;
    size_t first_head = names.size();
    for (size_t i = gpt2 ? 2 : 1; i < names.size(); ++i) {
      if (names[i].rfind(block, 0) != 0) {
        first_head = std::min(first_head, i);
        continue;
      }
      EXPECT_EQ(first_head, names.size()) << names[i] << " after the head's parameters";
      const int b = std::stoi(names[i].substr(block.size()));
      EXPECT_TRUE(b == last_block || b == last_block + 1) << names[i];
      last_block = b;
    }
    EXPECT_EQ(last_block, s.n_layer - 1);
    ASSERT_LT(first_head, names.size());
    EXPECT_EQ(names[first_head].substr(0, names[first_head].find('.')), gpt2 ? "ln_f" : "norm");
    if (!gpt2) EXPECT_EQ(names.back(), "lm_head.weight");
  }
}

TEST(Transformer, ParameterCountMatchesPresetFormula) {
  for (const char* name : {"gpt2-tiny", "llama-tiny"}) {
    auto cfg = get_preset(name);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    ModelConfig m = *cfg;
    ASSERT_TRUE(resolve_model_config(&m).ok());
    auto model = build_model(spec_from_config(m), 1);
    EXPECT_EQ(model->num_parameters(), param_count(m)) << name;
  }
}

TEST(Transformer, SameSeedSameParameters) {
  auto a = build_model(tiny(Family::kGPT2), 9), b = build_model(tiny(Family::kGPT2), 9);
  auto pa = a->parameters(), pb = b->parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(testing::bit_equal(pa[i].tensor, pb[i].tensor));
}

// Sample mean, standard deviation and the fraction of elements within one `sigma` of zero.
struct Moments {
  int64_t n = 0;
  double mean = 0, std = 0, within_sigma = 0;
};
Moments moments(const Tensor& t, double sigma) {
  const std::vector<double> v = t.to_vector();
  Moments m;
  m.n = static_cast<int64_t>(v.size());
  for (double x : v) m.mean += x;
  m.mean /= m.n;
  double ss = 0;
  int64_t inside = 0;
  for (double x : v) {
    ss += (x - m.mean) * (x - m.mean);
    if (std::abs(x) < sigma) ++inside;
  }
  m.std = std::sqrt(ss / (m.n - 1));
  m.within_sigma = static_cast<double>(inside) / m.n;
  return m;
}

// The weights of n i.i.d. N(0, sigma^2) draws: the sample mean has standard error sigma/sqrt(n),
// the sample std sigma/sqrt(2n) (normal theory), and the fraction of |x| < sigma (p = 0.6827 for a
// normal) sqrt(p(1-p)/n). Each is allowed 5 standard errors (a false alarm for a typical seed has
// probability ~6e-7 per check). The smallest matrix here, attn.c_proj (128 x 128 = 16384
// elements), gets std within 2.8% and the fraction within 1.8%: a wrong std (0.02 where
// 0.02/sqrt(8) = 0.0071 is due) or a uniform draw of the right std (fraction 0.577) fails.
void expect_normal(const nn::Parameter& p, double sigma) {
  SCOPED_TRACE(p.name);
  const Moments m = moments(p.tensor, sigma);
  const double n = static_cast<double>(m.n), p1 = std::erf(1.0 / std::sqrt(2.0));
  EXPECT_NEAR(m.mean, 0.0, 5 * sigma / std::sqrt(n));
  EXPECT_NEAR(m.std / sigma, 1.0, 5 / std::sqrt(2 * n)) << "std " << m.std << " want " << sigma;
  EXPECT_NEAR(m.within_sigma, p1, 5 * std::sqrt(p1 * (1 - p1) / n));
}

void expect_all(const nn::Parameter& p, double value) {
  const std::vector<double> v = p.tensor.to_vector();
  int64_t off = 0;
  for (double x : v) off += x != value;
  EXPECT_EQ(off, 0) << p.name << ": " << off << " of " << v.size() << " elements are not " << value;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

TEST(Transformer, Gpt2InitIsNormalWithScaledResidualProjections) {
  auto cfg = get_preset("gpt2-tiny");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ModelConfig m = *cfg;
  m.set_d_model(128);
  m.set_n_layer(4);
  ASSERT_TRUE(resolve_model_config(&m).ok());
  ASSERT_DOUBLE_EQ(m.init_std(), 0.02);
  ASSERT_TRUE(m.scale_residual_init());
  ASSERT_TRUE(m.bias());
  auto model = build_model(spec_from_config(m), 3);
  const double std = 0.02, residual = 0.02 / std::sqrt(2.0 * 4);
  int matrices = 0, residuals = 0, biases = 0, gains = 0;
  for (const nn::Parameter& p : model->parameters()) {
    const bool norm = p.name.find(".ln_") != std::string::npos || p.name.rfind("ln_", 0) == 0;
    if (ends_with(p.name, ".bias")) {
      expect_all(p, 0.0);
      ++biases;
    } else if (norm && ends_with(p.name, ".weight")) {
      expect_all(p, 1.0);
      ++gains;
    } else if (p.tensor.dim() == 2 && (ends_with(p.name, "attn.c_proj.weight") ||
                                       ends_with(p.name, "mlp.c_proj.weight"))) {
      expect_normal(p, residual);
      ++residuals;
    } else if (p.tensor.dim() == 2) {
      expect_normal(p, std);
      ++matrices;
    } else {
      ADD_FAILURE() << "unexpected parameter " << p.name << " " << p.tensor.str();
    }
  }
  // Per block: c_attn, attn.c_proj, c_fc, mlp.c_proj weights and biases, ln_1 and ln_2; plus wte
  // and wpe (the head is tied to wte) and ln_f.
  EXPECT_EQ(matrices, 2 + 2 * 4);
  EXPECT_EQ(residuals, 2 * 4);
  EXPECT_EQ(biases, 6 * 4 + 1);
  EXPECT_EQ(gains, 2 * 4 + 1);
}

TEST(Transformer, BadInputIsAClearError) {
  auto model = build_model(tiny(Family::kGPT2), 1);
  Generator g(1);
  EXPECT_THAT(
      [&] {
        model->forward(randint({2, 9}, g, 29, DType::kI32));
      },
      ::testing::ThrowsMessage<Error>(::testing::HasSubstr("exceeds max_seq_len 8")));
  EXPECT_THAT([&] { model->forward(randint({9}, g, 29, DType::kI32)); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("ids must be (B, T)")));
  ModelSpec bad = tiny(Family::kGPT2);
  bad.n_head = 3;
  EXPECT_THAT([&] { build_model(bad, 1); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr("must divide d_model")));
}

}  // namespace
}  // namespace kiln::models
