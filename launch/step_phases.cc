// StepPhases (launch/step_phases.h): host timestamps per step and their medians.
#include "launch/step_phases.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "core/ops/matmul.h"
#include "launch/trainer_log.h"

namespace kiln::launch {

bool StepPhases::enabled() {
  static const bool on = [] {
    const char* v = std::getenv("KILN_STEP_PHASES");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

void StepPhases::mark(Point p) {
  now_[p] = now_s();
  if (p != kSynced) return;
  std::array<double, kPoints> d{};
  d[kStart] = last_synced_ < 0 ? 0 : now_[kStart] - last_synced_;
  for (int i = kLaunched; i < kPoints; ++i) d[i] = now_[i] - now_[i - 1];
  steps_.push_back(d);
  last_synced_ = now_[kSynced];
}

std::string StepPhases::summary() const {
  if (steps_.size() < 2) return "";
  auto median = [&](auto value) {
    std::vector<double> v;
    for (size_t s = 1; s < steps_.size(); ++s) v.push_back(value(steps_[s]));
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  const double step = median([](const auto& d) {
    double t = 0;
    for (double x : d) t += x;
    return t;
  });
  static const char* kNames[kPoints] = {"between steps (log, data, checkpoint check)",
                                        "launch forward + backward",
                                        "wait for the loss",
                                        "gradient norm (launch + wait)",
                                        "launch the optimizer step",
                                        "wait for the step's end"};
  std::string out = absl::StrFormat("step phases (host, median of steps 2-%d): %.2f ms a step\n",
                                    static_cast<int>(steps_.size()), 1e3 * step);
  for (int p = 0; p < kPoints; ++p) {
    const double ms = 1e3 * median([p](const auto& d) { return d[p]; });
    absl::StrAppendFormat(&out, "  %-46s %9.3f ms %5.1f%%\n", kNames[p], ms,
                          step > 0 ? 100e-3 * ms / step : 0.0);
  }
  // Which weight-gradient paths the packed linears took (process totals, every step).
  absl::StrAppendFormat(
      &out, "  packed weight gradients: %d pieces straight into .grads, %d batched GEMMs\n",
      static_cast<int>(packed_direct_wgrad_pieces()),
      static_cast<int>(packed_wgrad_batched_gemms()));
  return out;
}

}  // namespace kiln::launch
