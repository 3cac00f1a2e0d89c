// The run folder's lock and the start-up probe of the folders a run writes: one `kiln train` per
// run folder (a second is refused naming the holder: pid, host, start time), and an unwritable
// checkpoint directory found at start rather than at the first save.
//
// The lock is flock(2) on RUN_DIR/.kiln.lock, held by rank 0 for the life of the process: the
// kernel drops it when the process ends however it ends (kill -9 included), so a stale lock is
// simply free and the next run takes it over; the file's text (pid, host, start time) only names
// the holder in the refusal.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kiln::launch {

class RunLock {
 public:
  // Creates `dir` if needed and locks it. FailedPrecondition naming the holder when another
  // process holds it; Unavailable when the lock file cannot be created.
  static absl::StatusOr<RunLock> acquire(const std::string& dir);
  RunLock(RunLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  RunLock& operator=(RunLock&& o) noexcept;
  ~RunLock();

 private:
  explicit RunLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Creates `dir` if needed and checks that a file can be created, written and removed in it
// (every rank writes its checkpoint shard there). Unavailable naming `what` and the OS error.
absl::Status probe_writable(const std::string& dir, const std::string& what);

}  // namespace kiln::launch
