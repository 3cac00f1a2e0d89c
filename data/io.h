// File helpers for the data layer: whole-file reads, atomic writes (temporary name, fsync, rename),
// read-only memory maps and glob expansion. Every error names the path and the OS's reason.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kiln::data {

absl::StatusOr<std::string> read_file(const std::string& path);
// Writes `contents` to path.tmp.<pid>, fsyncs it and renames it over `path`.
absl::Status write_file_atomic(const std::string& path, std::string_view contents);
// mkdir -p.
absl::Status make_dirs(const std::string& dir);

// A read-only view of a whole file (mmap; an empty file maps to an empty view).
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::string_view data() const { return {static_cast<const char*>(addr_), size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();
  std::string path_;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

// Expands each pattern (glob(3) syntax) to the sorted list of matching files; a pattern without
// wildcards is kept as is even when the file does not exist (so opening it reports the error). A
// wildcard pattern that matches nothing is a NotFound error naming it. Duplicates are dropped.
absl::StatusOr<std::vector<std::string>> expand_globs(const std::vector<std::string>& patterns);

}  // namespace kiln::data
