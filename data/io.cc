// File helpers for the data layer (see io.h): POSIX open/read/mmap/rename/glob with errors that
// name the path.
#include "data/io.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "data/absl_compat.h"

namespace kiln::data {
namespace {

absl::Status os_error(std::string_view what, const std::string& path) {
  int e = errno;
  std::string msg = absl::StrCat(av(what), " ", path, ": ", std::strerror(e));
  if (e == ENOENT) return absl::NotFoundError(msg);
  if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

// path opened read-only (the caller closes the descriptor), *st its stat; an error naming path
// for a missing or unreadable file or a directory.
absl::StatusOr<int> open_to_read(const std::string& path, struct stat* st) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return os_error("cannot open", path);
  if (::fstat(fd, st) != 0) {
    absl::Status s = os_error("cannot stat", path);
    ::close(fd);
    return s;
  }
  if (S_ISDIR(st->st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", path, ": is a directory"));
  }
  return fd;
}

bool has_wildcard(const std::string& p) { return p.find_first_of("*?[") != std::string::npos; }

}  // namespace

absl::StatusOr<std::string> read_file(const std::string& path) {
  struct stat st;
  absl::StatusOr<int> opened = open_to_read(path, &st);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  std::string out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t r = ::read(fd, out.data() + done, out.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      absl::Status s = os_error("cannot read", path);
      ::close(fd);
      return s;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  out.resize(done);
  ::close(fd);
  return out;
}

absl::Status write_file_atomic(const std::string& path, std::string_view contents) {
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return os_error("cannot create", tmp);
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t w = ::write(fd, contents.data() + done, contents.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      absl::Status s = os_error("cannot write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return s;
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    absl::Status s = os_error("cannot flush", tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = os_error("cannot rename into", path);
    ::unlink(tmp.c_str());
    return s;
  }
  return absl::OkStatus();
}

absl::Status make_dirs(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  std::string cur;
  size_t i = 0;
  while (i <= dir.size()) {
    size_t j = dir.find('/', i);
    if (j == std::string::npos) j = dir.size();
    cur = dir.substr(0, j);
    if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      return os_error("cannot create directory", cur);
    }
    i = j + 1;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return os_error("cannot create directory", dir);
  if (!S_ISDIR(st.st_mode))
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  return absl::OkStatus();
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  struct stat st;
  absl::StatusOr<int> opened = open_to_read(path, &st);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  MappedFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ > 0) {
    f.addr_ = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f.addr_ == MAP_FAILED) {
      f.addr_ = nullptr;
      f.size_ = 0;
      absl::Status s = os_error("cannot map", path);
      ::close(fd);
      return s;
    }
  }
  ::close(fd);
  return f;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), addr_(o.addr_), size_(o.size_) {
  o.addr_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    reset();
    path_ = std::move(o.path_);
    addr_ = o.addr_;
    size_ = o.size_;
    o.addr_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() { reset(); }

void MappedFile::reset() {
  if (addr_) ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

absl::StatusOr<std::vector<std::string>> expand_globs(const std::vector<std::string>& patterns) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& p : patterns) {
    std::vector<std::string> matched;
    if (!has_wildcard(p)) {
      matched.push_back(p);
    } else {
      glob_t g{};
      int rc = ::glob(p.c_str(), GLOB_ERR, nullptr, &g);
      if (rc == 0) {
        for (size_t i = 0; i < g.gl_pathc; ++i) matched.emplace_back(g.gl_pathv[i]);
      }
      ::globfree(&g);
      if (rc == GLOB_NOMATCH || matched.empty()) {
        return absl::NotFoundError(absl::StrCat("no file matches '", p, "'"));
      }
      if (rc != 0) return absl::InternalError(absl::StrCat("cannot expand '", p, "'"));
      std::sort(matched.begin(), matched.end());
    }
    for (auto& m : matched) {
      if (seen.insert(m).second) out.push_back(std::move(m));
    }
  }
  return out;
}

}  // namespace kiln::data
