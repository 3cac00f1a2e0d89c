// Stop signals and the fault-injection hook (see signals.h).
#include "launch/signals.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kiln::launch {

void maybe_inject_fault(int rank, int64_t step) {
  static const char* spec = std::getenv("KILN_FAULT_INJECT");
  if (!spec) return;
  int r = -1;
  long long s = -1;
  char action[16] = {0};
  if (std::sscanf(spec, "%d:%lld:%15s", &r, &s, action) != 3 || r != rank || s != step) return;
  std::fprintf(stderr, "kiln: fault injection: rank %d %s at step %lld\n", rank, action, s);
  std::fflush(stderr);
  if (std::strcmp(action, "kill") == 0) raise(SIGKILL);
  if (std::strcmp(action, "exit") == 0) std::_Exit(3);
  if (std::strcmp(action, "hang") == 0)
    for (;;) pause();
}

// SIGTERM / SIGINT while checkpoint.save_on_signal: the first one sets the flag (the trainer saves
// and stops after the current step); a second one gets the default action (exit at once).
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

StopSignalScope::StopSignalScope(bool on) : on_(on) {
  if (!on_) return;
  g_stop_signal = 0;
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old_term_);
  sigaction(SIGINT, &sa, &old_int_);
}

StopSignalScope::~StopSignalScope() {
  if (!on_) return;
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
}

}  // namespace kiln::launch
