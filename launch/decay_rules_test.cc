// Tests for apply_decay_rules (launch/trainer.h): which parameters the optimizer decays under the
// default rule (at least 2 dims: weight matrices and embeddings, not biases or norm gains),
// optimizer.no_decay globs and optimizer.decay_min_dim, on GPT-2 and Llama parameter names.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "models/presets.h"
#include "models/transformer.h"

namespace kiln::launch {
namespace {

// The optimizer section as resolve_config leaves it when a config sets none of it (the defaults,
// decay_min_dim 2, come from there: apply_decay_rules requires a resolved config).
OptimizerConfig resolved_optimizer() {
  TrainConfig c;
  c.mutable_model()->set_preset("gpt2-tiny");
  absl::Status s = resolve_config(&c);
  KILN_CHECK(s.ok()) << s.message();
  return c.optimizer();
}

// Parameters of a small preset model with every decay flag set to `initial`, so that a rule that
// leaves a flag alone is caught whichever way it should have gone.
std::vector<nn::Parameter> preset_params(const char* preset, bool initial) {
  auto cfg = get_preset(preset);
  KILN_CHECK(cfg.ok()) << cfg.status().message();
  ModelConfig m = *cfg;
  m.set_vocab_size(96);
  m.set_max_seq_len(16);
  KILN_CHECK(resolve_model_config(&m).ok());
  std::vector<nn::Parameter> params =
      models::build_model(models::spec_from_config(m), 1)->parameters();
  for (nn::Parameter& p : params) p.decay = initial;
  return params;
}

std::map<std::string, bool> decay_by_name(const OptimizerConfig& oc, const char* preset,
                                          bool initial) {
  std::vector<nn::Parameter> params = preset_params(preset, initial);
  apply_decay_rules(oc, &params);
  std::map<std::string, bool> out;
  for (const nn::Parameter& p : params) out[p.name] = p.decay;
  return out;
}

TEST(DecayRules, DefaultsDecayMatricesNotBiasesOrNormGains) {
  for (bool initial : {false, true}) {
    SCOPED_TRACE(initial ? "flags preset to true" : "flags preset to false");
    std::vector<nn::Parameter> params = preset_params("gpt2-tiny", initial);
    apply_decay_rules(resolved_optimizer(), &params);
    int matrices = 0, vectors = 0;
    for (const nn::Parameter& p : params) {
      EXPECT_EQ(p.decay, p.tensor.dim() >= 2) << p.name << " " << p.tensor.str();
      (p.tensor.dim() >= 2 ? matrices : vectors)++;
    }
    EXPECT_GT(matrices, 0);
    EXPECT_GT(vectors, 0);
    const std::map<std::string, bool> d = decay_by_name(resolved_optimizer(), "gpt2-tiny", initial);
    EXPECT_TRUE(d.at("wte.weight"));
    EXPECT_TRUE(d.at("wpe.weight"));
    EXPECT_TRUE(d.at("h.0.attn.c_attn.weight"));
    EXPECT_TRUE(d.at("h.1.mlp.c_proj.weight"));
    EXPECT_FALSE(d.at("h.0.attn.c_attn.bias"));
    EXPECT_FALSE(d.at("h.1.mlp.c_fc.bias"));
    EXPECT_FALSE(d.at("h.0.ln_1.weight"));
    EXPECT_FALSE(d.at("h.0.ln_1.bias"));
    EXPECT_FALSE(d.at("ln_f.weight"));
  }
}

TEST(DecayRules, LlamaNormGainsDoNotDecayHeadDoes) {
  const std::map<std::string, bool> d = decay_by_name(resolved_optimizer(), "llama-tiny", false);
  EXPECT_TRUE(d.at("embed_tokens.weight"));
  EXPECT_TRUE(d.at("lm_head.weight"));
  EXPECT_TRUE(d.at("layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(d.at("layers.1.mlp.gate_proj.weight"));
  EXPECT_FALSE(d.at("layers.0.input_layernorm.weight"));
  EXPECT_FALSE(d.at("layers.1.post_attention_layernorm.weight"));
  EXPECT_FALSE(d.at("norm.weight"));
}

TEST(DecayRules, NoDecayGlobsTurnDecayOff) {
  const std::map<std::string, bool> base = decay_by_name(resolved_optimizer(), "gpt2-tiny", true);
  OptimizerConfig oc = resolved_optimizer();
  oc.add_no_decay("*wte*");
  std::map<std::string, bool> d = decay_by_name(oc, "gpt2-tiny", true);
  EXPECT_FALSE(d.at("wte.weight"));
  for (const auto& [name, decay] : base)
    if (name != "wte.weight") EXPECT_EQ(d.at(name), decay) << name;
  // Several globs; '*' crosses the '.' separators (fnmatch without FNM_PATHNAME).
  oc.add_no_decay("h.*.attn.c_attn.weight");
  d = decay_by_name(oc, "gpt2-tiny", true);
  EXPECT_FALSE(d.at("wte.weight"));
  EXPECT_FALSE(d.at("h.0.attn.c_attn.weight"));
  EXPECT_FALSE(d.at("h.1.attn.c_attn.weight"));
  EXPECT_TRUE(d.at("h.0.attn.c_proj.weight"));
  EXPECT_TRUE(d.at("wpe.weight"));
  // A glob matching nothing changes nothing.
  OptimizerConfig none = resolved_optimizer();
  none.add_no_decay("no_such_param*");
  EXPECT_EQ(decay_by_name(none, "gpt2-tiny", true), base);
}

TEST(DecayRules, DecayMinDimMovesTheThreshold) {
  OptimizerConfig oc = resolved_optimizer();
  oc.set_decay_min_dim(1);
  for (const auto& [name, decay] : decay_by_name(oc, "gpt2-tiny", false))
    EXPECT_TRUE(decay) << name << " (decay_min_dim 1: every parameter decays)";
  oc.set_decay_min_dim(3);
  for (const auto& [name, decay] : decay_by_name(oc, "gpt2-tiny", true))
    EXPECT_FALSE(decay) << name << " (decay_min_dim 3: nothing here has 3 dims)";
  // no_decay still applies below the threshold.
  oc.set_decay_min_dim(1);
  oc.add_no_decay("*.bias");
  for (const auto& [name, decay] : decay_by_name(oc, "gpt2-tiny", false))
    EXPECT_EQ(decay, name.size() < 5 || name.substr(name.size() - 5) != ".bias") << name;
}

}  // namespace
}  // namespace kiln::launch
