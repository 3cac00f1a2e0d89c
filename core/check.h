// Always-on invariant and argument checks. KILN_CHECK(cond) << "context" throws kiln::Error
// carrying file:line and the message; the CLI catches it at the top and exits non-zero with that
// text, so a bad shape, dtype or device is a clear error, never a crash. Boundaries that fail for
// outside reasons (files, configs, data) return absl::Status instead.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace internal {

// Collects a message with operator<< and throws kiln::Error when destroyed at the end of the
// full-expression. Only ever constructed by the macros below, on the failure path.
class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* cond) {
    stream_ << file << ":" << line << ": check failed: " << cond << ". ";
  }
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;
  ~CheckFailure() noexcept(false) { throw Error(stream_.str()); }
  template <typename T>
  CheckFailure& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  std::ostringstream stream_;
};

// Lets `KILN_CHECK(c) << x;` parse as a single void expression.
struct Voidify {
  void operator&(const CheckFailure&) {}
};

}  // namespace internal
}  // namespace kiln

#define KILN_CHECK(cond) \
  (cond) ? (void)0       \
         : ::kiln::internal::Voidify() & ::kiln::internal::CheckFailure(__FILE__, __LINE__, #cond)

#define KILN_CHECK_EQ(a, b) KILN_CHECK((a) == (b)) << (a) << " vs " << (b) << ". "
#define KILN_CHECK_NE(a, b) KILN_CHECK((a) != (b)) << (a) << " vs " << (b) << ". "
#define KILN_CHECK_LT(a, b) KILN_CHECK((a) < (b)) << (a) << " vs " << (b) << ". "
#define KILN_CHECK_LE(a, b) KILN_CHECK((a) <= (b)) << (a) << " vs " << (b) << ". "
#define KILN_CHECK_GE(a, b) KILN_CHECK((a) >= (b)) << (a) << " vs " << (b) << ". "
#define KILN_CHECK_GT(a, b) KILN_CHECK((a) > (b)) << (a) << " vs " << (b) << ". "
