// CPU parallelism: parallel_for over [0, n) in chunks on a persistent thread pool. The number of
// threads is KILN_NUM_THREADS or the hardware concurrency. Chunking is static (a function of n,
// grain and the thread count only), so a kernel that writes disjoint ranges is deterministic.
#pragma once

#include <cstdint>
#include <functional>

namespace kiln {

int num_threads();
void set_num_threads(int n);
// Calls fn(begin, end) on disjoint chunks covering [0, n); runs inline when n <= grain.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace kiln
