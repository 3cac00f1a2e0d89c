// The safetensors format (https://github.com/huggingface/safetensors), written and read without
// the Python package: an 8-byte little-endian header length N, N bytes of JSON
//   {"NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...,
//    "__metadata__": {"format": "pt"}}
// (space-padded), then the data section; offsets are relative to it. The reader checks what the
// reference implementation checks: known dtypes, byte sizes that match the shapes, and offsets
// that tile the data section exactly. Depends only on Abseil (the fuzzer builds it alone).
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kiln::launch {

inline constexpr uint64_t kMaxSafetensorsHeader = 100u << 20;  // the reference limit, 100 MB

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", "BF16", ...
  std::vector<int64_t> shape;   // () for a scalar
  uint64_t begin = 0, end = 0;  // byte range in the data section
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // in data order
  std::vector<std::pair<std::string, std::string>> metadata;
  uint64_t data_start = 0;  // 8 + N: where the data section starts in the file
  const SafetensorsEntry* find(std::string_view name) const;
};

// Bytes per element of a safetensors dtype name; 0 when unknown.
int64_t safetensors_dtype_size(std::string_view dtype);

// Parses and validates the header. `prefix` holds at least the file's first 8 + N bytes (more is
// fine); `file_size` is the whole file's size. Errors say what is wrong and, for a tensor, name
// it.
absl::StatusOr<SafetensorsHeader> parse_safetensors_header(std::string_view prefix,
                                                           uint64_t file_size);

// One tensor to write: its name, dtype and shape; the bytes come from `data` or a producer.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string_view data;  // numel(shape) * dtype size bytes (in-memory form)
};

// Writes `path` (through path.tmp, fsynced, renamed), tensors in the given order.
absl::Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& ts,
                               const std::vector<std::pair<std::string, std::string>>& metadata);
// Streaming form: `produce(i, &bytes)` fills tensor i's bytes just before they are written (so a
// large model need not be held whole in memory); `data` of the specs is ignored.
absl::Status write_safetensors(
    const std::string& path, const std::vector<SafetensorsTensor>& specs,
    const std::vector<std::pair<std::string, std::string>>& metadata,
    const std::function<absl::Status(size_t index, std::string* bytes)>& produce);

class SafetensorsReader {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> open(const std::string& path);
  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  // Reads the entry's bytes (end - begin of them) into `out`.
  absl::Status read(const SafetensorsEntry& e, void* out);

 private:
  std::string path_;
  std::ifstream in_;
  SafetensorsHeader header_;
};

}  // namespace kiln::launch
