// Stop signals and the fault-injection hooks (see signals.h).
#include "launch/signals.h"

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace kiln::launch {
namespace {

int g_save_signal = SIGUSR1;
int g_agreed_signal = 0;
// CLOCK_MONOTONIC nanoseconds of the first stop signal (clock_gettime is async-signal-safe).
volatile std::sig_atomic_t g_first_s = 0;   // seconds part
volatile std::sig_atomic_t g_first_ms = 0;  // milliseconds part

void monotonic(int64_t* s, int64_t* ms) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  *s = ts.tv_sec;
  *ms = ts.tv_nsec / 1000000;
}

}  // namespace

void maybe_inject_fault(int rank, int64_t step) {
  static const int delay_ms = [] {
    const char* d = std::getenv("KILN_STEP_DELAY_MS");
    return d ? std::atoi(d) : 0;
  }();
  if (delay_ms > 0) {  // the whole delay, as a slow step would take it, signals or not
    timespec left = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
  }
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

volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  int64_t s, ms;
  monotonic(&s, &ms);
  if (g_stop_signal == 0) {  // the first: save and stop after the current step
    g_first_s = static_cast<std::sig_atomic_t>(s);
    g_first_ms = static_cast<std::sig_atomic_t>(ms);
    g_stop_signal = sig;
    return;
  }
  const double since = static_cast<double>(s - g_first_s) + (ms - g_first_ms) / 1000.0;
  if (since < kRepeatWindowS) return;  // the same stop, signalled again (Slurm, srun, scripts)
  std::signal(sig, SIG_DFL);           // asked again later: exit now
  std::raise(sig);
}

void set_save_signal(int sig) { g_save_signal = sig; }
int save_signal() { return g_save_signal; }

absl::StatusOr<int> parse_save_signal(const std::string& name) {
  std::string n = absl::AsciiStrToUpper(name);
  if (n.empty()) return SIGUSR1;
  if (n == "NONE") return 0;
  if (n.rfind("SIG", 0) == 0) n = n.substr(3);
  if (n == "USR1") return SIGUSR1;
  if (n == "USR2") return SIGUSR2;
  return absl::InvalidArgumentError(
      absl::StrCat("checkpoint.save_signal: '", name, "' is not SIGUSR1, SIGUSR2 or none"));
}

std::string signal_name(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    default:
      return absl::StrCat("signal ", sig);
  }
}

int stop_exit_status(int sig) { return 128 + sig; }

void set_agreed_stop_signal(int sig) { g_agreed_signal = sig; }
int agreed_stop_signal() { return g_agreed_signal; }

StopSignalScope::StopSignalScope(bool on) : on_(on) {
  if (!on_) return;
  g_stop_signal = 0;
  g_agreed_signal = 0;
  save_sig_ = g_save_signal;
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old_term_);
  sigaction(SIGINT, &sa, &old_int_);
  if (save_sig_ != 0) sigaction(save_sig_, &sa, &old_save_);
}

StopSignalScope::~StopSignalScope() {
  if (!on_) return;
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
  if (save_sig_ != 0) sigaction(save_sig_, &old_save_, nullptr);
}

}  // namespace kiln::launch
