// Where the host spends each training step (KILN_STEP_PHASES=1): launching the forward and
// backward, waiting for the loss, the gradient norm (launch and wait), launching the optimizer,
// waiting for the step's end, and the work between steps. While the host waits at a sync the GPU
// is busy; the host work after a wait, until the next launch, leaves the GPU idle, so the phases
// bound what removing a sync could win. The trainer prints their medians at the end of the run.
#pragma once

#include <array>
#include <string>
#include <vector>

namespace kiln::launch {

class StepPhases {
 public:
  // The points of a step, in order; kStart is the start of the next step's work.
  enum Point { kStart, kLaunched, kLoss, kNorm, kStepped, kSynced, kPoints };

  static bool enabled();  // KILN_STEP_PHASES=1, read once
  // Records the host clock at `p` of the current step; kSynced closes the step.
  void mark(Point p);
  // One line per phase: the median over the steps after the first (in ms) and its share of the
  // median step; empty before two closed steps.
  std::string summary() const;

 private:
  std::array<double, kPoints> now_{};
  double last_synced_ = -1;
  std::vector<std::array<double, kPoints> > steps_;  // durations: [p] = time from p - 1 to p,
                                                     // [kStart] = from the last kSynced
};

}  // namespace kiln::launch
