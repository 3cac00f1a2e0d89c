// libFuzzer target: untrusted bytes -> validated checkpoint Manifest
// (launch/checkpoint_manifest.h), the path every checkpoint load takes first. Each input is tried
// as a whole manifest.bin and, so that mutations get past the CRC, as a payload framed with a
// correct header. A manifest that validates must re-encode to bytes that decode and validate again.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "launch/checkpoint_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  (void)kiln::launch::decode_manifest(in, "fuzz/manifest.bin");
  const std::string framed = kiln::launch::frame_manifest_payload(in);
  absl::StatusOr<kiln::Manifest> m = kiln::launch::decode_manifest(framed, "fuzz/manifest.bin");
  if (m.ok()) {
    const std::string again = kiln::launch::encode_manifest(*m);
    if (!kiln::launch::decode_manifest(again, "fuzz/again").ok()) __builtin_trap();
    int64_t covered = 0;
    for (const kiln::TensorEntry& e : m->tensors()) {
      // What loading computes from a validated entry must not overflow.
      if (e.file_offset() + e.shard_length() * 4 < e.file_offset()) __builtin_trap();
      covered += e.shard_length();
    }
    if (covered < 0) __builtin_trap();
  }
  return 0;
}
