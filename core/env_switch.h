// An opt-in switch for a path under evaluation (e.g. GPU code not yet run on a GPU): on when its
// environment variable is "1" (read once, on first use), unless a test forces it on or off.
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace kiln {

class EnvSwitch {
 public:
  constexpr explicit EnvSwitch(const char* name) : name_(name) {}
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
  // Whether the environment variable is "1".
  bool env() const {
    int e = env_.load();
    if (e < 0) {
      const char* v = std::getenv(name_);
      e = v != nullptr && std::strcmp(v, "1") == 0 ? 1 : 0;
      env_.store(e);
    }
    return e == 1;
  }
  void force(int on) { forced_.store(on); }  // 1 on, 0 off, -1 back to the environment

 private:
  const char* name_;
  std::atomic<int> forced_{-1};
  mutable std::atomic<int> env_{-1};  // the environment's value once read; -1 before
};

}  // namespace kiln
