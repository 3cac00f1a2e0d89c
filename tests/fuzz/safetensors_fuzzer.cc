// libFuzzer target: untrusted bytes -> validated safetensors header (launch/safetensors.h), as
// `kiln train --init-from` reads a file someone else wrote; and the JSON reader (core/json.h) on
// its own. A header that validates must describe tensors that lie inside the file and tile its
// data section.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/json.h"
#include "launch/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<kiln::launch::SafetensorsHeader> h =
      kiln::launch::parse_safetensors_header(in, size);
  if (h.ok()) {
    uint64_t at = 0;
    for (const kiln::launch::SafetensorsEntry& e : h->tensors) {
      if (e.begin != at || e.end < e.begin) __builtin_trap();
      at = e.end;
    }
    if (h->data_start + at != size) __builtin_trap();
  }
  if (size > 0 && data[0] == '{') (void)kiln::parse_json(in);
  return 0;
}
