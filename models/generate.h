// Autoregressive sampling from a LanguageModel: temperature and top-k over the last position's
// logits, seeded, without a KV cache (the context is re-run each token, cropped to max_seq_len).
#pragma once

#include <cstdint>
#include <vector>

#include "core/random.h"
#include "models/model.h"

namespace kiln::models {

struct SampleOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // > 0
  int64_t top_k = 0;         // 0 = the full vocabulary
  int64_t stop_token = -1;   // stop after emitting this id (e.g. end-of-text); -1 = never
};

// Returns the prompt followed by the generated ids. Padded vocabulary rows are never sampled.
std::vector<int64_t> generate(LanguageModel& model, const std::vector<int64_t>& prompt,
                              const SampleOptions& opts, Generator& gen);

}  // namespace kiln::models
