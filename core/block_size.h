// The size rounding of kiln's caching allocators: the bytes each hands out (and counts in
// MemoryStats) for a request. The CPU allocator (core/allocator.cc) and the CUDA one
// (core/cuda/allocator.cc) round with these; kiln plan (launch/memory_plan.h) predicts mem_peak
// with them.
#pragma once

#include <cstddef>

namespace kiln {

// Up to 512 bytes: multiples of 64; larger: multiples of 1/8 of the next power of two.
size_t cpu_block_size(size_t nbytes);
// Up to 1 MiB: multiples of 512 bytes; up to 1 GiB: multiples of 1/8 of the next power of two;
// larger (DataParallel's one gradient allocation): multiples of 64 MiB, so that a 4.1 GiB block
// does not take 5 GiB.
size_t cuda_block_size(size_t nbytes);

}  // namespace kiln
