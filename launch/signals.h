// Signals of a training run: the stop signals (SIGTERM / SIGINT) that make the Trainer save a
// checkpoint and stop after the current step, and the fault-injection hook of the fault tests.
#pragma once

#include <signal.h>

#include <csignal>
#include <cstdint>

namespace kiln::launch {

// Test hook for the fault-tolerance tests: KILN_FAULT_INJECT="RANK:STEP:ACTION" makes rank RANK, at
// the start of step STEP, die by SIGKILL ("kill"), exit(3) ("exit") or sleep forever ("hang").
void maybe_inject_fault(int rank, int64_t step);

// The stop signal caught during the run, 0 when none.
extern volatile std::sig_atomic_t g_stop_signal;

// The handler StopSignalScope installs.
void on_stop_signal(int sig);

// Installs the handlers for the lifetime of a run and restores the previous ones after it.
class StopSignalScope {
 public:
  explicit StopSignalScope(bool on);
  ~StopSignalScope();
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

 private:
  bool on_;
  struct sigaction old_term_ = {}, old_int_ = {};
};

}  // namespace kiln::launch
