// The model both real-model pipeline benchmarks (stage_split_bench, zb_pair_bench) run: GPT-2 with
// 4 blocks, 8 heads, width 512, vocabulary 512, 128 positions (benchmarks/pipeline/real_model.sh).
#pragma once

#include "core/check.h"
#include "models/model.h"
#include "models/presets.h"

namespace kiln::bench {

inline models::ModelSpec pipeline_bench_spec() {
  ModelConfig cfg;
  cfg.set_preset("gpt2-tiny");
  cfg.set_n_layer(4);
  cfg.set_n_head(8);
  cfg.set_d_model(512);
  cfg.set_vocab_size(512);
  cfg.set_max_seq_len(128);
  const absl::Status s = resolve_model_config(&cfg);
  KILN_CHECK(s.ok()) << s.message();
  return models::spec_from_config(cfg);
}

}  // namespace kiln::bench
