// Training schedules: learning rate (warmup + cosine, warmup-stable-decay, linear, constant), the
// batch-size ramp (Megatron's rampup: start, increment, over a token budget) and the
// sequence-length curriculum (DeepSpeed's fixed_linear / fixed_root / fixed_discrete). All are pure
// functions of progress (step or tokens seen), so a resumed run recomputes them exactly.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln::optim {

enum class LrKind { kCosine, kWsd, kLinear, kConstant };

struct LrSchedule {
  LrKind kind = LrKind::kCosine;
  double max_lr = 6e-4;
  double min_lr_ratio = 0.1;    // floor as a fraction of max_lr
  double warmup = 0;            // in the same unit as `total` (steps or tokens)
  double total = 1;             // the whole run
  double decay_fraction = 0.2;  // WSD: the final fraction of `total` spent decaying
  double at(double progress) const;
};

struct BatchRamp {
  int64_t start = 0;       // 0 = no ramp
  int64_t increment = 1;   // sequences added per ramp stage
  int64_t final_size = 1;  // the configured global batch
  double ramp_tokens = 0;  // tokens over which the batch grows from start to final
  // Global batch (sequences) after `tokens_seen` tokens; a multiple of `multiple` (micro * dp).
  int64_t at(double tokens_seen, int64_t multiple = 1) const;
};

enum class CurriculumKind { kNone, kFixedLinear, kFixedRoot, kFixedDiscrete };

struct SeqLenCurriculum {
  CurriculumKind kind = CurriculumKind::kNone;
  int64_t min_len = 8, max_len = 1024;
  int64_t steps = 0;             // steps over which min -> max
  int64_t multiple = 8;          // lengths are rounded down to a multiple of this
  double root_degree = 2;        // fixed_root
  std::vector<int64_t> lengths;  // fixed_discrete: lengths in order...
  std::vector<int64_t> until;    // ...each used until this step (exclusive)
  int64_t at(int64_t step) const;
};

}  // namespace kiln::optim
