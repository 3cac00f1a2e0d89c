// Schedule formulas.
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

namespace kiln::optim {

double LrSchedule::at(double x) const {
  const double min_lr = max_lr * min_lr_ratio;
  if (warmup > 0 && x < warmup) return max_lr * (x + 1) / (warmup + 1);
  if (kind == LrKind::kConstant) return max_lr;
  const double span = std::max(total - warmup, 1e-12);
  const double f = std::clamp((x - warmup) / span, 0.0, 1.0);  // post-warmup progress
  switch (kind) {
    case LrKind::kCosine:
      return min_lr + 0.5 * (max_lr - min_lr) * (1 + std::cos(M_PI * f));
    case LrKind::kLinear:
      return max_lr + (min_lr - max_lr) * f;
    case LrKind::kWsd: {
      const double decay_start = total * (1.0 - decay_fraction);
      if (x < decay_start) return max_lr;
      const double d =
          std::clamp((x - decay_start) / std::max(total - decay_start, 1e-12), 0.0, 1.0);
      return max_lr + (min_lr - max_lr) * d;
    }
    case LrKind::kConstant:
      break;
  }
  return max_lr;
}

int64_t BatchRamp::at(double tokens_seen, int64_t multiple) const {
  int64_t b = final_size;
  if (start > 0 && start < final_size && ramp_tokens > 0) {
    const int64_t stages = std::max<int64_t>(1, (final_size - start + increment - 1) / increment);
    const double per_stage = ramp_tokens / static_cast<double>(stages);
    const int64_t stage = static_cast<int64_t>(tokens_seen / per_stage);
    b = std::min(final_size, start + stage * increment);
  }
  multiple = std::max<int64_t>(multiple, 1);
  return std::max(multiple, b / multiple * multiple);
}

int64_t SeqLenCurriculum::at(int64_t step) const {
  int64_t len = max_len;
  switch (kind) {
    case CurriculumKind::kNone:
      return max_len;
    case CurriculumKind::kFixedLinear:
    case CurriculumKind::kFixedRoot: {
      double f = steps > 0 ? std::min(1.0, static_cast<double>(step) / steps) : 1.0;
      if (kind == CurriculumKind::kFixedRoot) f = std::pow(f, 1.0 / root_degree);
      len = min_len + static_cast<int64_t>(f * static_cast<double>(max_len - min_len));
      break;
    }
    case CurriculumKind::kFixedDiscrete:
      for (size_t i = 0; i < lengths.size(); ++i) {
        if (i + 1 == lengths.size() || (i < until.size() && step < until[i])) {
          len = lengths[i];
          break;
        }
      }
      break;
  }
  const int64_t m = std::max<int64_t>(multiple, 1);
  len = len / m * m;
  return std::clamp(len, std::min(min_len, max_len), max_len);
}

}  // namespace kiln::optim
