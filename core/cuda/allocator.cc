// The caching stream-ordered CUDA allocator: per-device free lists of cudaMalloc'd blocks keyed
// by rounded size, blocks parked behind events when another stream used them, stats, and a clear
// out-of-memory error.
#include "core/cuda/allocator.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/block_size.h"
#include "core/check.h"
#include "core/cuda/runtime.h"

namespace kiln::cuda {
namespace {

// Sizes up to 1 MiB round to 512 bytes, larger ones to 1/8 of the next power of two
// (kiln::cuda_block_size, core/block_size.h, which kiln plan predicts with).
size_t round_size(size_t n) { return kiln::cuda_block_size(n); }

std::string mib(int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

struct Block {
  size_t size = 0;
  int device = 0;
  std::vector<cudaStream_t> streams;  // streams other than the compute stream that used it
};

struct Pending {
  void* ptr = nullptr;
  size_t size = 0;
  std::vector<cudaEvent_t> events;
};

struct DevicePool {
  std::multimap<size_t, void*> free;  // size -> block
  std::vector<Pending> pending;       // freed blocks waiting for other streams
  std::vector<cudaEvent_t> spare_events;
  MemoryStats stats;
};

std::atomic<bool> g_poison{false};

class CachingCudaAllocator final : public Allocator {
 public:
  CachingCudaAllocator() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    pools_.resize(std::max(n, 1));
  }

  void* allocate(size_t nbytes) override {
    return allocate_on(Device::cuda(current_device()), nbytes);
  }
  void deallocate(void* p, size_t nbytes) override { deallocate_on(Device::cuda(0), p, nbytes); }

  void* allocate_on(Device d, size_t nbytes) override {
    const size_t sz = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    DevicePool& pool = pool_for(d.index);
    collect_pending(pool);
    void* p = nullptr;
    size_t got = 0;
    auto it = pool.free.lower_bound(sz);
    if (it != pool.free.end() && it->first <= sz + sz / 4) {
      p = it->second;
      got = it->first;
      pool.free.erase(it);
      ++counters_.cache_hits;
    } else {
      p = device_malloc(d.index, pool, sz);
      got = sz;
    }
    live_[p] = Block{got, d.index, {}};
    pool.stats.allocated += static_cast<int64_t>(got);
    pool.stats.peak = std::max(pool.stats.peak, pool.stats.allocated);
    if (g_poison.load(std::memory_order_relaxed)) {
      DeviceGuard g(d.index);
      KILN_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, got, compute_stream(d.index)));
    }
    return p;
  }

  void deallocate_on(Device, void* p, size_t) override {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {  // never throw from a destructor path
      std::fprintf(stderr, "kiln: CUDA allocator asked to free unknown pointer %p\n", p);
      return;
    }
    Block b = std::move(it->second);
    live_.erase(it);
    DevicePool& pool = pool_for(b.device);
    pool.stats.allocated -= static_cast<int64_t>(b.size);
    if (b.streams.empty()) {
      pool.free.emplace(b.size, p);
      return;
    }
    // Used on other streams: reusable once each of them has passed this point.
    Pending pend{p, b.size, {}};
    DeviceGuard g(b.device);
    for (cudaStream_t s : b.streams) {
      cudaEvent_t ev = take_event(pool);
      if (cudaEventRecord(ev, s) != cudaSuccess) {
        (void)cudaGetLastError();
        (void)cudaStreamSynchronize(s);  // fall back to waiting now
        pool.spare_events.push_back(ev);
        continue;
      }
      pend.events.push_back(ev);
    }
    if (pend.events.empty()) {
      pool.free.emplace(b.size, p);
    } else {
      pool.pending.push_back(std::move(pend));
    }
  }

  MemoryStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    MemoryStats s;
    for (const DevicePool& p : pools_) {
      s.allocated += p.stats.allocated;
      s.peak += p.stats.peak;
      s.reserved += p.stats.reserved;
    }
    return s;
  }
  MemoryStats stats_on(Device d) const override {
    std::lock_guard<std::mutex> lock(mu_);
    if (d.index < 0 || d.index >= static_cast<int>(pools_.size())) return {};
    return pools_[d.index].stats;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (DevicePool& p : pools_) p.stats.peak = p.stats.allocated;
  }
  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (int d = 0; d < static_cast<int>(pools_.size()); ++d) release_cached(d, pools_[d], true);
  }

  void record_stream(void* p, cudaStream_t s) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    KILN_CHECK(it != live_.end()) << "record_stream: pointer " << p
                                  << " was not allocated by the CUDA caching allocator";
    if (s == compute_stream(it->second.device)) return;
    auto& v = it->second.streams;
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
  }

  AllocatorCounters counters() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counters_;
  }

 private:
  DevicePool& pool_for(int device) {
    KILN_CHECK(device >= 0 && device < static_cast<int>(pools_.size()))
        << "CUDA allocator: device cuda:" << device << " does not exist (" << pools_.size()
        << " visible)";
    return pools_[device];
  }

  cudaEvent_t take_event(DevicePool& pool) {
    if (!pool.spare_events.empty()) {
      cudaEvent_t e = pool.spare_events.back();
      pool.spare_events.pop_back();
      return e;
    }
    cudaEvent_t e;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }

  // Moves pending blocks whose streams have all finished to the free list. With `wait`, blocks
  // until they have.
  void collect_pending(DevicePool& pool, bool wait = false) {
    if (pool.pending.empty()) return;
    std::vector<Pending> still;
    for (Pending& pd : pool.pending) {
      bool done = true;
      for (cudaEvent_t e : pd.events) {
        cudaError_t st = wait ? cudaEventSynchronize(e) : cudaEventQuery(e);
        if (st == cudaErrorNotReady) {
          done = false;
          break;
        }
        KILN_CUDA_CHECK(st);
      }
      if (done) {
        for (cudaEvent_t e : pd.events) pool.spare_events.push_back(e);
        pool.free.emplace(pd.size, pd.ptr);
      } else {
        still.push_back(std::move(pd));
      }
    }
    pool.pending = std::move(still);
  }

  // cudaFree every cached block of `device`.
  void release_cached(int device, DevicePool& pool, bool wait_pending) {
    if (pool.free.empty() && pool.pending.empty()) return;
    DeviceGuard g(device);
    collect_pending(pool, wait_pending);
    for (auto& [sz, p] : pool.free) {
      KILN_CUDA_CHECK(cudaFree(p));
      pool.stats.reserved -= static_cast<int64_t>(sz);
      ++counters_.device_frees;
    }
    pool.free.clear();
  }

  void* device_malloc(int device, DevicePool& pool, size_t sz) {
    DeviceGuard g(device);
    void* p = nullptr;
    cudaError_t st = cudaMalloc(&p, sz);
    if (st == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the error, give the cache back, retry once
      release_cached(device, pool, true);
      st = cudaMalloc(&p, sz);
    }
    if (st != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      KILN_CHECK(false) << "CUDA out of memory on cuda:" << device << ": tried to allocate " << sz
                        << " bytes (" << mib(static_cast<int64_t>(sz)) << "); the device has "
                        << mib(static_cast<int64_t>(free_b)) << " free of "
                        << mib(static_cast<int64_t>(total_b)) << " total; kiln holds "
                        << mib(pool.stats.allocated) << " in tensors and "
                        << mib(pool.stats.reserved) << " reserved (" << cudaGetErrorString(st)
                        << ")";
    }
    ++counters_.device_mallocs;
    pool.stats.reserved += static_cast<int64_t>(sz);
    return p;
  }

  mutable std::mutex mu_;
  std::vector<DevicePool> pools_;
  std::unordered_map<void*, Block> live_;
  AllocatorCounters counters_;
};

CachingCudaAllocator* the_allocator() {
  static CachingCudaAllocator* a = new CachingCudaAllocator();  // never destroyed
  return a;
}

}  // namespace

Allocator* caching_allocator() { return the_allocator(); }

MemoryStats device_memory_stats(int device) {
  return the_allocator()->stats_on(Device::cuda(device));
}

AllocatorCounters allocator_counters() { return the_allocator()->counters(); }

void empty_cache() { the_allocator()->empty_cache(); }

void set_poison_allocations(bool on) { g_poison.store(on); }
bool poison_allocations() { return g_poison.load(); }

void record_stream(const Tensor& t, cudaStream_t stream) {
  KILN_CHECK(t.defined() && t.device().is_cuda())
      << "record_stream: expected a CUDA tensor, got " << t.str();
  the_allocator()->record_stream(t.storage()->data(), stream);
}

}  // namespace kiln::cuda
