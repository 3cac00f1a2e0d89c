// `--set a.b=VALUE` overrides (launch/config_overrides.cc): scalars, enums, repeated fields
// (replace, append, clear), whole messages, and errors that name the path.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "launch/config.h"
#include "launch/testing/tiny_config.h"

namespace kiln {
namespace {

using ::testing::HasSubstr;

using testing::base_config;
constexpr const char* kBase = testing::kBaseConfig;

std::string message_of(const absl::Status& s) { return std::string(s.message()); }

TEST(OverrideTest, NestedEnumBoolStringAndNumbers) {
  TrainConfig c = base_config();
  ASSERT_TRUE(apply_overrides({"model.n_layer=6", "optimizer.type=sgd", "schedule.lr.kind=WSD",
                               "data.shuffle=false", "training.deterministic=true",
                               "optimizer.lr=2.5e-4", "logging.run_dir=\"runs/x y\"",
                               "precision.dtype=bf16", "training.token_budget=123456789012"},
                              &c)
                  .ok());
  EXPECT_EQ(c.model().n_layer(), 6);
  EXPECT_EQ(c.optimizer().type(), OptimizerConfig::SGD);
  EXPECT_EQ(c.schedule().lr().kind(), LrSchedule::WSD);
  EXPECT_TRUE(c.data().has_shuffle());
  EXPECT_FALSE(c.data().shuffle());
  EXPECT_TRUE(c.training().deterministic());
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 2.5e-4);
  EXPECT_EQ(c.logging().run_dir(), "runs/x y");
  EXPECT_EQ(c.precision().dtype(), PrecisionConfig::BF16);
  EXPECT_EQ(c.training().token_budget(), 123456789012);
}

TEST(OverrideTest, ExplicitZeroDiffersFromUnset) {
  absl::StatusOr<TrainConfig> c = parse_config(kBase);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(apply_override("optimizer.weight_decay=0", &*c).ok());
  EXPECT_TRUE(c->optimizer().has_weight_decay());
  ASSERT_TRUE(resolve_config(&*c).ok());
  EXPECT_EQ(c->optimizer().weight_decay(), 0.0);   // not the 0.1 default
  EXPECT_DOUBLE_EQ(c->optimizer().beta2(), 0.95);  // unset: the default
}

TEST(OverrideTest, RepeatedReplacesAppendsAndClears) {
  TrainConfig c = base_config();
  c.mutable_optimizer()->add_no_decay("from_the_file");
  // "=X" replaces the list (the config file's value) with [X], like a scalar override.
  ASSERT_TRUE(apply_override("optimizer.no_decay=wte.*", &c).ok());
  ASSERT_EQ(c.optimizer().no_decay_size(), 1);
  EXPECT_EQ(c.optimizer().no_decay(0), "wte.*");
  ASSERT_TRUE(apply_override("optimizer.no_decay+=*.ln_*", &c).ok());  // "+=X" appends
  ASSERT_EQ(c.optimizer().no_decay_size(), 2);
  EXPECT_EQ(c.optimizer().no_decay(1), "*.ln_*");
  ASSERT_TRUE(apply_override("optimizer.no_decay=[a, b, c]", &c).ok());
  ASSERT_EQ(c.optimizer().no_decay_size(), 3);
  EXPECT_EQ(c.optimizer().no_decay(2), "c");
  ASSERT_TRUE(apply_override("optimizer.no_decay=[]", &c).ok());
  EXPECT_EQ(c.optimizer().no_decay_size(), 0);
  ASSERT_TRUE(apply_override("schedule.seq_len.discrete_lens=[8, 16]", &c).ok());
  ASSERT_TRUE(apply_override("schedule.seq_len.discrete_lens=32", &c).ok());
  ASSERT_EQ(c.schedule().seq_len().discrete_lens_size(), 1);
  EXPECT_EQ(c.schedule().seq_len().discrete_lens(0), 32);
  absl::Status s = apply_override("model.n_layer+=2", &c);  // += is for lists only
  EXPECT_THAT(message_of(s), HasSubstr("model.n_layer is not a list"));
}

TEST(OverrideTest, MessageValueMerges) {
  TrainConfig c = base_config();
  ASSERT_TRUE(apply_override("model={n_layer: 3 d_model: 96}", &c).ok());
  EXPECT_EQ(c.model().n_layer(), 3);
  EXPECT_EQ(c.model().d_model(), 96);
  EXPECT_EQ(c.model().preset(), "gpt2-tiny");  // merged, not replaced
  absl::Status s = apply_override("model={n_layerz: 3}", &c);
  EXPECT_THAT(message_of(s), HasSubstr("did you mean 'n_layer'?"));
}

TEST(OverrideTest, PresetOverrideThenResolve) {
  absl::StatusOr<TrainConfig> c = parse_config("model { preset: \"gpt2-tiny\" n_layer: 1 }");
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(apply_override("model.preset=gpt2-124m", &*c).ok());
  ASSERT_TRUE(resolve_config(&*c).ok());
  EXPECT_EQ(c->model().d_model(), 768);
  EXPECT_EQ(c->model().n_layer(), 1);  // explicit field still wins
}

TEST(OverrideTest, ErrorsNameThePath) {
  TrainConfig c = base_config();
  absl::Status s = apply_override("model.n_layers=4", &c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(message_of(s), HasSubstr("model.n_layers"));
  EXPECT_THAT(message_of(s), HasSubstr("did you mean 'n_layer'?"));
  s = apply_override("modle.n_layer=4", &c);
  EXPECT_THAT(message_of(s), HasSubstr("modle.n_layer"));
  s = apply_override("model.n_layer.x=4", &c);
  EXPECT_THAT(message_of(s), HasSubstr("'model.n_layer' is not a section"));
  s = apply_override("model.n_layer=four", &c);
  EXPECT_THAT(message_of(s), HasSubstr("model.n_layer"));
  EXPECT_THAT(message_of(s), HasSubstr("integer"));
  s = apply_override("model.family=GPT3", &c);
  EXPECT_THAT(message_of(s), HasSubstr("GPT2, LLAMA"));
  s = apply_override("data.shuffle=maybe", &c);
  EXPECT_THAT(message_of(s), HasSubstr("true or false"));
  s = apply_override("model.n_layer", &c);
  EXPECT_THAT(message_of(s), HasSubstr("PATH=VALUE"));
  s = apply_override("model.n_layer=99999999999", &c);
  EXPECT_THAT(message_of(s), HasSubstr("32-bit"));
}

// ---- resolution and printing ----

}  // namespace
}  // namespace kiln
