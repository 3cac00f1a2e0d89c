// The caching CPU allocator and the per-device allocator registry.
#include "core/allocator.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "core/block_size.h"
#include "core/check.h"

namespace kiln {
namespace {

constexpr size_t kAlign = 64;

// Up to a multiple of 1/8 of the next power of two (at least `min_step`): at most 12.5% waste.
size_t round_eighths(size_t n, size_t min_step) {
  size_t p = 1;
  while (p < n) p <<= 1;
  const size_t step = std::max<size_t>(p / 8, min_step);
  return (n + step - 1) / step * step;
}

size_t round_size(size_t n) { return cpu_block_size(n); }

class CachingCpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    size_t sz = round_size(std::max<size_t>(nbytes, 1));
    std::lock_guard<std::mutex> lock(mu_);
    void* p = nullptr;
    auto it = free_.find(sz);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
    } else {
      p = std::aligned_alloc(kAlign, sz);
      KILN_CHECK(p != nullptr) << "out of host memory allocating " << sz << " bytes";
      stats_.reserved += sz;
    }
    stats_.allocated += sz;
    stats_.peak = std::max(stats_.peak, stats_.allocated);
    return p;
  }
  void deallocate(void* p, size_t nbytes) override {
    size_t sz = round_size(std::max<size_t>(nbytes, 1));
    std::lock_guard<std::mutex> lock(mu_);
    stats_.allocated -= sz;
    free_[sz].push_back(p);
  }
  MemoryStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  void reset_peak() override {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak = stats_.allocated;
  }
  void empty_cache() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [sz, v] : free_) {
      for (void* p : v) std::free(p);
      stats_.reserved -= static_cast<int64_t>(sz * v.size());
    }
    free_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  MemoryStats stats_;
};

Allocator* g_cuda_allocator = nullptr;

}  // namespace

size_t cpu_block_size(size_t n) {
  n = std::max<size_t>(n, 1);
  if (n <= 512) return (n + kAlign - 1) / kAlign * kAlign;
  return round_eighths(n, kAlign);
}

size_t cuda_block_size(size_t n) {
  constexpr size_t kSmallStep = 512;  // sizes up to 1 MiB round to 512 bytes
  n = std::max<size_t>(n, 1);
  constexpr size_t kHugeStep = size_t{64} << 20;  // over 1 GiB: 64 MiB steps
  if (n <= (size_t{1} << 20)) return (n + kSmallStep - 1) / kSmallStep * kSmallStep;
  if (n > (size_t{1} << 30)) return (n + kHugeStep - 1) / kHugeStep * kHugeStep;
  return round_eighths(n, 1);
}

Allocator* allocator_for(Device d) {
  if (d.is_cpu()) {
    static Allocator* cpu = new CachingCpuAllocator();  // never destroyed: outlives static tensors
    return cpu;
  }
  KILN_CHECK(g_cuda_allocator != nullptr)
      << "device " << d << " requested but kiln was built without CUDA or no GPU is available";
  return g_cuda_allocator;
}

void register_cuda_allocator(Allocator* a) { g_cuda_allocator = a; }

MemoryStats memory_stats(Device d) { return allocator_for(d)->stats_on(d); }

Storage::Storage(size_t nbytes, Device device)
    : nbytes_(nbytes), device_(device), allocator_(allocator_for(device)) {
  data_ = allocator_->allocate_on(device, nbytes);
}

Storage::~Storage() {
  if (data_) allocator_->deallocate_on(device_, data_, nbytes_);
}

}  // namespace kiln
