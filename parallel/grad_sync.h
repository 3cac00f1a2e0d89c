// The gradient-synchronisation hooks that a forward-backward schedule (parallel/forward_backward.h)
// calls around each micro-batch. Data parallel and ZeRO implement them (parallel/data_parallel.h):
// DDP all-reduces its buckets and ZeRO-1 reduce-scatters them during the backward of the
// micro-batch marked last; ZeRO-2/3 reduce-scatter every micro-batch. Only the schedule knows which
// micro-batch is last (a pipeline finishes them out of order), so only it calls these.
#pragma once

namespace kiln::parallel {

class GradSync {
 public:
  virtual ~GradSync() = default;
  // Before a micro-batch's forward; `last`: its backward completes this step's gradients.
  virtual void begin_micro_step(bool last) = 0;
  // After that micro-batch's backward.
  virtual void end_micro_step() = 0;
};

// No synchronisation (one process, or tests of a schedule alone).
class NoGradSync final : public GradSync {
 public:
  void begin_micro_step(bool) override {}
  void end_micro_step() override {}
};

}  // namespace kiln::parallel
