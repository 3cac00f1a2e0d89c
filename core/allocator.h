// Device memory allocators. Storage asks the allocator of its device; the CPU one caches freed
// blocks by rounded size so steady-state training does no malloc/free (and no fresh page faults),
// and both report allocated, peak and reserved bytes for the metrics line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/dtype.h"

namespace kiln {

struct MemoryStats {
  int64_t allocated = 0;  // bytes handed out and not yet returned
  int64_t peak = 0;       // max of allocated since the last reset
  int64_t reserved = 0;   // bytes held from the system (handed out + cached)
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* p, size_t nbytes) = 0;
  virtual MemoryStats stats() const = 0;
  virtual void reset_peak() = 0;
  virtual void empty_cache() = 0;
  // Device-aware variants that Storage calls. An allocator serving several devices (the CUDA one)
  // overrides them; the defaults ignore the device.
  virtual void* allocate_on(Device d, size_t nbytes) {
    (void)d;
    return allocate(nbytes);
  }
  virtual void deallocate_on(Device d, void* p, size_t nbytes) {
    (void)d;
    deallocate(p, nbytes);
  }
  virtual MemoryStats stats_on(Device d) const {
    (void)d;
    return stats();
  }
};

// The allocator for a device. CUDA allocators are registered by the CUDA backend at start-up.
Allocator* allocator_for(Device d);
void register_cuda_allocator(Allocator* a);  // one allocator serving every CUDA device index
MemoryStats memory_stats(Device d);

// A block of device memory owned by shared_ptr; freed through its allocator.
class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  Allocator* allocator_ = nullptr;
};

}  // namespace kiln
