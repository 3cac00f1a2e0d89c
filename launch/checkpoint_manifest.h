// The checkpoint manifest on disk: framing (magic, version, CRC32C, length) around the binary
// Manifest proto (proto/checkpoint.proto), and the validation that turns untrusted bytes into a
// Manifest every later step may rely on (offsets in range, pieces tiling each tensor exactly, file
// names that stay inside the checkpoint directory). Depends only on the proto and Abseil, so the
// fuzzer (tests/fuzz/) builds it alone.
//
// manifest.bin layout (little-endian):
//   [0, 8)    "KILNMFST"
//   [8, 12)   u32 frame version (1)
//   [12, 16)  u32 CRC32C of the payload
//   [16, 24)  u64 payload length
//   [24, ...) payload: Manifest in protobuf binary form
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/checkpoint.pb.h"

namespace kiln::launch {

// Manifest.format_version: 1 when every tensor entry is a flat range (what every data-parallel /
// ZeRO checkpoint is, and all that older kilns wrote), 2 when some entry is a box; both are read.
inline constexpr uint32_t kManifestFormatVersion = 1;
inline constexpr uint32_t kManifestBoxVersion = 2;
inline constexpr char kChecksumAlgorithm[] = "crc32c";
inline constexpr size_t kManifestHeaderBytes = 24;
// The manifest's file in a checkpoint directory.
inline constexpr char kManifestFile[] = "manifest.bin";

// CRC32C (Castagnoli) of data, continuing from `crc` (0 to start): crc32c_update(crc32c_update(0,
// a), b) is the CRC of a followed by b. Uses the SSE4.2 instruction when the CPU has it.
uint32_t crc32c_update(uint32_t crc, const void* data, size_t n);

// manifest.bin's bytes for `m` (framing above). REQUIRES: m is valid (validate_manifest).
std::string encode_manifest(const Manifest& m);
// The framing alone around any payload (encode_manifest = frame of the serialised proto).
std::string frame_manifest_payload(std::string_view payload);

// Framing, CRC, protobuf parse and validate_manifest. `where` (the file's path) prefixes errors.
absl::StatusOr<Manifest> decode_manifest(std::string_view bytes, const std::string& where);

// Every internal-consistency rule of a manifest; errors name the field or tensor:
// - format_version 1 or 2 (box entries only in 2), checksum_algorithm "crc32c", step/tokens >= 0;
// - layout: world_size >= 1, dp/tp/pp >= 1 with dp * tp * pp == world_size, zero_stage 0-3;
// - files: plain names ([A-Za-z0-9._-], not "." or ".."), no duplicates;
// - tensors: a name, F32, every dim >= 0 with at most 2^48 elements, 0 <= shard_offset,
//   shard_offset + shard_length <= numel, a listed file, file_offset >= 0, rank < world_size;
//   a box entry's box inside the shape, with shard_offset 0 and shard_length its element count;
//   every piece of one name has the same shape, and the pieces of a name tile the tensor exactly
//   (no gap, no overlap: flat ranges tile [0, numel); with boxes, the boxes of all pieces, flat
//   ones decomposed, are disjoint and add up to numel);
// - rng / loader ranks < world_size.
absl::Status validate_manifest(const Manifest& m);

// Bytes of one element of a stored dtype (0 for DTYPE_UNSPECIFIED / unknown).
int64_t stored_dtype_size(TensorDtype d);

// "step_00000100": the directory name of the checkpoint after `step` steps; parse_step_dir_name
// returns -1 for anything else ("step_" and 8 or more digits, nothing more).
std::string step_dir_name(int64_t step);
int64_t parse_step_dir_name(std::string_view name);

// A small file of a checkpoint (manifest.bin, `latest`, a rank's part file) read whole;
// NotFound naming the path when it cannot be opened, DataLoss on a read error.
absl::StatusOr<std::string> read_checkpoint_file(const std::string& path);

}  // namespace kiln::launch
