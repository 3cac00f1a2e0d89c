// The run folder's lock (flock on RUN_DIR/.kiln.lock) and the writability probe (run_lock.h).
#include "launch/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace kiln::launch {
namespace {

std::string os_error() { return std::strerror(errno); }

absl::Status make_dir(const std::string& dir, const std::string& what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::UnavailableError(
        absl::StrCat("cannot create ", what, " ", dir, ": ", ec.message()));
  return absl::OkStatus();
}

std::string read_all(int fd) {
  std::string out;
  char buf[512];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, buf, sizeof(buf), at);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    at += n;
  }
  return out;
}

}  // namespace

absl::StatusOr<RunLock> RunLock::acquire(const std::string& dir) {
  if (absl::Status s = make_dir(dir, "run folder"); !s.ok()) return s;
  const std::string path = dir + "/.kiln.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0)
    return absl::UnavailableError(
        absl::StrCat("cannot create the lock file ", path, ": ", os_error()));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const bool busy = errno == EWOULDBLOCK;
    const std::string err = os_error();
    std::string holder(absl::StripTrailingAsciiWhitespace(read_all(fd)));
    ::close(fd);
    if (!busy) return absl::UnavailableError(absl::StrCat("cannot lock ", path, ": ", err));
    return absl::FailedPreconditionError(absl::StrCat(
        "the run folder ", dir, " is in use by another kiln train (",
        holder.empty() ? "holder unknown" : holder,
        "); wait for it to finish, stop it, or set logging.run_dir to another folder"));
  }
  // Ours now (a holder killed with -9 left only its text behind): say who holds it.
  char host[256] = "unknown";
  ::gethostname(host, sizeof(host) - 1);
  const std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
  const std::string text =
      absl::StrCat("pid ", ::getpid(), " on host ", host, ", started ", when, "\n");
  if (::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    const std::string err = os_error();
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("cannot write the lock file ", path, ": ", err));
  }
  return RunLock(fd);
}

RunLock& RunLock::operator=(RunLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
}

absl::Status probe_writable(const std::string& dir, const std::string& what) {
  if (absl::Status s = make_dir(dir, what); !s.ok()) return s;
  char host[256] = "host";
  ::gethostname(host, sizeof(host) - 1);
  const std::string probe = absl::StrCat(dir, "/.kiln_probe.", host, ".", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
  bool ok = fd >= 0;
  std::string err = ok ? "" : os_error();
  if (ok) {
    ok = ::write(fd, "k", 1) == 1 && ::fsync(fd) == 0;
    if (!ok) err = os_error();
    ::close(fd);
    ::unlink(probe.c_str());
  }
  if (!ok) return absl::UnavailableError(absl::StrCat(what, " ", dir, " is not writable: ", err));
  return absl::OkStatus();
}

}  // namespace kiln::launch
