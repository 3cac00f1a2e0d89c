// The shared tiny training run of the tests (see tiny_config.h).
#include "launch/testing/tiny_config.h"

#include <gtest/gtest.h>

#include "core/check.h"
#include "google/protobuf/text_format.h"
#include "launch/config.h"

namespace kiln::testing {

const char kTinyConfig[] = R"pb(
  model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
  data { synthetic: true seq_len: 16 }
  training { global_batch_size: 8 max_steps: 20 seed: 7 }
  parallel { micro_batch_size: 4 }
  optimizer { lr: 1e-2 }
  schedule { lr { warmup_steps: 2 } }
  eval { batches: 2 sample_tokens: 0 }
  logging { tensorboard: false jsonl: false }
  checkpoint { resume: "never" save_at_end: false }
  device: CPU
)pb";

TrainConfig tiny_config(const std::string& run_dir, const std::string& overrides, int world_size) {
  absl::StatusOr<TrainConfig> c = parse_config(kTinyConfig, "tiny_config");
  KILN_CHECK(c.ok()) << c.status().message();
  KILN_CHECK(google::protobuf::TextFormat::MergeFromString(overrides, &*c))
      << "tiny_config overrides are not TrainConfig textproto: " << overrides;
  c->mutable_logging()->set_run_dir(run_dir);
  absl::Status s = resolve_config(&*c);
  if (s.ok()) s = resolve_world(world_size, &*c);
  if (s.ok()) s = validate_config(*c);
  KILN_CHECK(s.ok()) << s.message();
  return *c;
}

const char kBaseConfig[] = R"pb(
  name: "t"
  device: CPU
  model { preset: "gpt2-tiny" }
  data { synthetic: true seq_len: 32 }
  parallel { micro_batch_size: 2 }
  training { global_batch_size: 8 max_steps: 10 }
)pb";

TrainConfig base_config() {
  absl::StatusOr<TrainConfig> cfg = parse_config(kBaseConfig, "base");
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  absl::Status s = resolve_config(&*cfg);
  EXPECT_TRUE(s.ok()) << s;
  return *cfg;
}

}  // namespace kiln::testing
