// Tests of the model presets: parameter counts against the published numbers, resolution order
// (explicit fields over the preset over family defaults), errors naming the field, and the
// FLOPs-per-token formula.
#include "models/presets.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace kiln {
namespace {

using ::testing::HasSubstr;

ModelConfig resolved_preset(const std::string& preset) {
  ModelConfig m;
  m.set_preset(preset);
  absl::Status s = resolve_model_config(&m);
  EXPECT_TRUE(s.ok()) << s;
  return m;
}

// Published counts: the Hugging Face checkpoints' numel() (GPT-2 with tied head and vocab 50257).
TEST(PresetsTest, Gpt2ParamCountsMatchPublished) {
  EXPECT_EQ(param_count(resolved_preset("gpt2-124m")), 124439808);
  EXPECT_EQ(param_count(resolved_preset("gpt2-350m")), 354823168);
  EXPECT_EQ(param_count(resolved_preset("gpt2-774m")), 774030080);
  EXPECT_EQ(param_count(resolved_preset("gpt2-1.5b")), 1557611200);
}

TEST(PresetsTest, LlamaParamCountsMatchPublished) {
  EXPECT_EQ(param_count(resolved_preset("llama-1b")), 1100048384);  // TinyLlama-1.1B
  EXPECT_EQ(param_count(resolved_preset("llama-8b")), 8030261248);  // Meta-Llama-3-8B
}

TEST(PresetsTest, OverridesReproduceOtherPublishedLlamas) {
  // Llama-3.2-1B: 16 layers, 8 kv heads, d_ff 8192, vocab 128256, tied head.
  ModelConfig m;
  m.set_preset("llama-1b");
  m.set_n_layer(16);
  m.set_n_kv_head(8);
  m.set_d_ff(8192);
  m.set_vocab_size(128256);
  m.set_tied_embeddings(true);
  ASSERT_TRUE(resolve_model_config(&m).ok());
  EXPECT_EQ(m.n_head(), 32);  // from the preset
  EXPECT_EQ(param_count(m), 1235814400);

  // Llama-2-7B: the 8b shape with multi-head attention, vocab 32000 and d_ff = 0 (the family
  // default, 11008).
  ModelConfig l2;
  l2.set_preset("llama-8b");
  l2.set_n_kv_head(32);
  l2.set_d_ff(0);
  l2.set_vocab_size(32000);
  ASSERT_TRUE(resolve_model_config(&l2).ok());
  EXPECT_EQ(l2.d_ff(), 11008);
  EXPECT_EQ(param_count(l2), 6738415616);
}

TEST(PresetsTest, VocabPaddingCountsPaddedRows) {
  ModelConfig m;
  m.set_preset("gpt2-124m");
  m.set_vocab_pad_multiple(128);
  ASSERT_TRUE(resolve_model_config(&m).ok());
  EXPECT_EQ(padded_vocab_size(m), 50304);
  EXPECT_EQ(param_count(m), 124475904);  // llm.c's count for its padded GPT-2 124M
}

TEST(PresetsTest, EveryPresetResolvesAndIsConsistent) {
  for (const std::string& name : preset_names()) {
    ModelConfig m = resolved_preset(name);
    EXPECT_EQ(m.preset(), name);
    EXPECT_NE(m.family(), ModelConfig::FAMILY_UNSPECIFIED) << name;
    EXPECT_EQ(m.d_model() % m.n_head(), 0) << name;
    EXPECT_EQ(m.n_head() % m.n_kv_head(), 0) << name;
    EXPECT_GT(param_count(m), 0) << name;
    EXPECT_TRUE(m.has_init_std() && m.has_bias() && m.has_tied_embeddings()) << name;
  }
}

TEST(PresetsTest, FamilyDefaults) {
  ModelConfig gpt = resolved_preset("gpt2-124m");
  EXPECT_TRUE(gpt.tied_embeddings());
  EXPECT_TRUE(gpt.bias());
  EXPECT_FALSE(gpt.has_rope_theta());
  EXPECT_DOUBLE_EQ(gpt.init_std(), 0.02);
  ModelConfig llama = resolved_preset("llama-8b");
  EXPECT_FALSE(llama.tied_embeddings());
  EXPECT_FALSE(llama.bias());
  EXPECT_DOUBLE_EQ(llama.rope_theta(), 500000.0);
  EXPECT_EQ(default_ffn_dim(ModelConfig::LLAMA, 2048), 5632);
  EXPECT_EQ(default_ffn_dim(ModelConfig::LLAMA, 4096), 11008);
  EXPECT_EQ(default_ffn_dim(ModelConfig::GPT2, 768), 3072);
}

TEST(PresetsTest, ExplicitFieldsWinOverPreset) {
  ModelConfig m;
  m.set_preset("gpt2-124m");
  m.set_n_layer(4);
  m.set_dropout(0.0);
  m.set_tied_embeddings(false);
  ASSERT_TRUE(resolve_model_config(&m).ok());
  EXPECT_EQ(m.n_layer(), 4);
  EXPECT_EQ(m.d_model(), 768);
  EXPECT_FALSE(m.tied_embeddings());
}

TEST(PresetsTest, NoPresetNeedsFamilyAndShape) {
  ModelConfig m;
  m.set_family(ModelConfig::LLAMA);
  m.set_n_layer(2);
  m.set_n_head(4);
  m.set_d_model(128);
  m.set_max_seq_len(256);
  ASSERT_TRUE(resolve_model_config(&m).ok());
  EXPECT_EQ(m.n_kv_head(), 4);
  EXPECT_EQ(m.d_ff(), 512);  // 8*128/3 = 341 -> 512
  EXPECT_EQ(m.vocab_size(), 50257);

  ModelConfig no_family;
  no_family.set_n_layer(2);
  EXPECT_THAT(std::string(resolve_model_config(&no_family).message()), HasSubstr("model.family"));

  ModelConfig no_width;
  no_width.set_family(ModelConfig::GPT2);
  no_width.set_n_layer(2);
  no_width.set_n_head(2);
  no_width.set_max_seq_len(64);
  EXPECT_THAT(std::string(resolve_model_config(&no_width).message()), HasSubstr("model.d_model"));
}

TEST(PresetsTest, UnknownPresetAndFamilyConflictNameTheField) {
  ModelConfig m;
  m.set_preset("gpt3-175b");
  absl::Status s = resolve_model_config(&m);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.preset"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("gpt3-175b"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("gpt2-124m"));

  ModelConfig c;
  c.set_preset("gpt2-124m");
  c.set_family(ModelConfig::LLAMA);
  EXPECT_THAT(std::string(resolve_model_config(&c).message()), HasSubstr("model.family"));
}

TEST(PresetsTest, FlopsPerTokenFormula) {
  ModelConfig m = resolved_preset("gpt2-124m");
  ParamCounts p = count_params(m);
  EXPECT_EQ(p.matmul, 124439808 - 1024 * 768);  // tied: only the position table is lookup-only
  // 6 * 123,653,376 + 12 * 12 * 768 * 1024
  EXPECT_DOUBLE_EQ(training_flops_per_token(m, 1024), 855166464.0);
  ModelConfig l = resolved_preset("llama-8b");
  EXPECT_EQ(count_params(l).matmul,
            8030261248 - 128256LL * 4096);  // untied: input embedding is a lookup
  EXPECT_DOUBLE_EQ(training_flops_per_token(l, 8192),
                   6.0 * (8030261248 - 128256.0 * 4096) + 12.0 * 32 * 4096 * 8192);
}

}  // namespace
}  // namespace kiln
