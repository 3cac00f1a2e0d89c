// Signals of a training run: the stop signals that make the Trainer save a checkpoint and stop
// after the current step (SIGTERM, SIGINT and the save signal, SIGUSR1 unless configured
// otherwise), the exit statuses `kiln train` reports for them, and the fault-injection hook of the
// fault tests.
//
// Slurm at a --time limit (and on scancel / preemption) sends SIGCONT and SIGTERM, often SIGTERM
// twice within milliseconds (to the step and, forwarded, by srun / the batch script). Every stop
// signal within kRepeatWindowS seconds of the first counts as that one; a stop signal after the
// window means "exit now" (the default action).
#pragma once

#include <signal.h>

#include <csignal>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace kiln::launch {

// Seconds after the first stop signal in which further stop signals are absorbed.
inline constexpr double kRepeatWindowS = 5.0;

// Test hooks for the fault-tolerance tests: KILN_FAULT_INJECT="RANK:STEP:ACTION" makes rank RANK,
// at the start of step STEP, die by SIGKILL ("kill"), exit(3) ("exit") or sleep forever ("hang");
// KILN_STEP_DELAY_MS=N sleeps N ms at the start of every step (slow steps without CPU load, so that
// a test can signal or requeue a run mid-way).
void maybe_inject_fault(int rank, int64_t step);

// The stop signal caught during the run, 0 when none.
extern volatile std::sig_atomic_t g_stop_signal;

// The handler StopSignalScope installs.
void on_stop_signal(int sig);

// The signal besides SIGTERM and SIGINT that saves and stops: SIGUSR1 by default, 0 for none.
// Process-wide (signal dispositions are); set before the run from checkpoint.save_signal.
void set_save_signal(int sig);
int save_signal();
// checkpoint.save_signal: "" (the default, SIGUSR1), "SIGUSR1", "SIGUSR2" (with or without the
// SIG prefix) or "none" (0). InvalidArgument naming the field otherwise.
absl::StatusOr<int> parse_save_signal(const std::string& name);

// "SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", else "signal N".
std::string signal_name(int sig);

// The exit status of `kiln train` stopped by `sig` after saving a checkpoint: 128 + sig, the status
// a shell reports for a process that signal ended (SIGINT 130, SIGUSR1 138, SIGUSR2 140,
// SIGTERM 143), so that `kiln train ... && kiln export ...` never exports a half-trained model.
// The Slurm scripts requeue on the save signal's status (138). A finished run exits 0.
int stop_exit_status(int sig);

// The stop signal every rank agreed on (the Trainer records it when it stops; 0 when none).
void set_agreed_stop_signal(int sig);
int agreed_stop_signal();

// Installs the handlers (SIGTERM, SIGINT, the save signal) for the lifetime of a run and restores
// the previous ones after it.
class StopSignalScope {
 public:
  explicit StopSignalScope(bool on);
  ~StopSignalScope();
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

 private:
  bool on_;
  int save_sig_ = 0;
  struct sigaction old_term_ = {}, old_int_ = {}, old_save_ = {};
};

}  // namespace kiln::launch
