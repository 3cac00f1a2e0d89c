// The caching, stream-ordered CUDA allocator. Freed blocks go to per-device free lists keyed by
// rounded size and are handed out again without cudaMalloc; because every kernel of a device runs
// on its compute stream, a block freed by the host can be reused at once by later work on that
// stream (stream order keeps the old reads before the new writes). A block used on another stream
// must be announced with record_stream(); it becomes reusable only once that stream has passed the
// point of the free. Only compiled with KILN_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/allocator.h"
#include "core/tensor.h"

namespace kiln::cuda {

struct AllocatorCounters {
  int64_t device_mallocs = 0;  // cudaMalloc calls since start-up (cache misses)
  int64_t device_frees = 0;    // cudaFree calls (empty_cache, OOM retries)
  int64_t cache_hits = 0;      // allocations served from a free list
};

// The process-wide CUDA allocator (registered with core/allocator.h by register_backend).
Allocator* caching_allocator();

// Stats of one device, and its counters.
MemoryStats device_memory_stats(int device);
AllocatorCounters allocator_counters();

// Frees every cached block of every device back to the driver.
void empty_cache();

// Test hook: when on, every allocation is filled with 0xFF bytes (NaN for every float dtype, -1
// for integers) on the compute stream before it is handed out, so a kernel that leaves any output
// element unwritten shows NaNs.
void set_poison_allocations(bool on);
bool poison_allocations();

// Marks t's storage as used on `stream` (other than its device's compute stream): when the storage
// is freed, its block is not reused until `stream` has finished the work enqueued so far.
void record_stream(const Tensor& t, cudaStream_t stream);

}  // namespace kiln::cuda
