// A switch for a path under evaluation or just promoted: its environment variable (read once, on
// first use) turns it on with "1" and off with "0"; unset (or any other value) leaves the default,
// off for an opt-in path, on once the path has passed its GPU tests and measured faster. A test
// may force it either way.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace kiln {

class EnvSwitch {
 public:
  constexpr explicit EnvSwitch(const char* name, bool default_on = false)
      : name_(name), default_on_(default_on) {}
  // The forced value, else the environment's.
  bool on() const {
    const std::optional<bool> f = forced();
    return f ? *f : env();
  }
  // What a test forced, if anything.
  std::optional<bool> forced() const {
    const int f = forced_.load();
    return f < 0 ? std::nullopt : std::optional<bool>(f == 1);
  }
  // The environment's value ("1" on, "0" off, else the default).
  bool env() const {
    int e = env_.load();
    if (e < 0) {
      e = env_flag(name_, default_on_) ? 1 : 0;
      env_.store(e);
    }
    return e == 1;
  }
  // Reads variable `name` now: "1" true, "0" false, unset or anything else default_on.
  static bool env_flag(const char* name, bool default_on) {
    const char* v = std::getenv(name);
    if (v != nullptr && std::strcmp(v, "1") == 0) return true;
    if (v != nullptr && std::strcmp(v, "0") == 0) return false;
    return default_on;
  }
  void force(int on) { forced_.store(on); }  // 1 on, 0 off, -1 back to the environment

 private:
  const char* name_;
  bool default_on_;
  std::atomic<int> forced_{-1};
  mutable std::atomic<int> env_{-1};  // the environment's value once read; -1 before
};

}  // namespace kiln
