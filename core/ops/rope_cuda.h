// Internal: the CUDA half of rotary_embedding (core/ops/rope.h), for rope.cc's dispatch, the GPU
// tests and the kernel benchmark. The kernels live in rope.cu. Only compiled with CUDA.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln::cuda {

// Which implementation rope_forward runs.
//  kEnv: KILN_ROPE (read once): unset, "" or "v2" -> kV2; "v1" -> kV1; anything else is an error.
//  kV1: the first kernel: the angle tables rebuilt on every call, one pair per thread, 64-bit
//       index math (for A/B measurements).
//  kV2: cached angle tables; 32-bit index math with vector loads and stores where x's innermost
//       dim is contiguous and aligned (else one pair per thread); the v1 kernel (with the cached
//       tables) where offsets need 64 bits.
enum class RopeImpl { kEnv, kV1, kV2 };

// The kernel the latest rope_forward on this thread ran (for tests).
enum class RopePath { kNone, kV1, kVector, kScalar32, kScalar64 };
RopePath last_rope_path();
// Pairs per thread of the latest kVector launch on this thread (2, 4 or 8).
int last_rope_vec();

// x (B, H, T, D), any strides, on the current device. Returns x rotated by +angle (or by -angle
// when inverse, the backward), contiguous, in x's dtype. Every implementation gives the same bits.
Tensor rope_forward(const Tensor& x, double theta, int64_t offset, bool inverse,
                    RopeImpl impl = RopeImpl::kEnv);
// The same rotation written into `out`: x's shape and dtype, D innermost, any other strides (the
// projection's (B, T, H, D) memory, a slice of a packed buffer), not overlapping x.
void rope_into(const Tensor& x, const Tensor& out, double theta, int64_t offset, bool inverse,
               RopeImpl impl = RopeImpl::kEnv);

// The cache of (T, D/2) cos / sin tables that kV2 keeps per (device, T, D, theta, offset, compute
// dtype), at most kRopeTableCacheSize entries (the least recently used one is dropped).
constexpr int kRopeTableCacheSize = 16;
struct RopeTableCacheStats {
  int64_t hits = 0, builds = 0, entries = 0;
};
RopeTableCacheStats rope_table_cache_stats();
void clear_rope_table_cache();  // drops every entry and zeroes the counters

}  // namespace kiln::cuda
