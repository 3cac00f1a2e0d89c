// Pinned (page-locked) host memory for host-to-device uploads. PinnedBuffer is a reusable staging
// buffer a data loader fills and copies out asynchronously; upload() copies pageable host memory to
// the GPU through a per-device pair of pinned buffers, so the memcpy into one overlaps the DMA out
// of the other. Only compiled with KILN_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln::cuda {

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t nbytes) { reserve(nbytes); }
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;

  void* data() const { return data_; }
  size_t capacity() const { return capacity_; }
  // Grows to at least nbytes (contents are not kept), waiting for an in-flight copy first.
  void reserve(size_t nbytes);

  // Copies the first nbytes to device memory `dst` on `stream` (the current device's compute
  // stream when null) without blocking; the buffer must not be refilled before wait().
  void copy_to_device(void* dst, size_t nbytes, cudaStream_t stream = nullptr);
  // Blocks until the last copy out of this buffer has finished (no-op when none is in flight).
  void wait();
  // Whether a copy out of this buffer may still be running (never blocks).
  bool busy();

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t event_ = nullptr;
  int event_device_ = -1;
  bool in_flight_ = false;
};

// Copies nbytes from pageable host memory to device memory `dst` (on the current device) on its
// compute stream, staged through pinned buffers. Returns once `src` may be reused; the device copy
// itself completes in stream order.
void upload(void* dst, const void* src, size_t nbytes);

// The data path's uploads (a batch of token ids every micro-step): each goes through the next of
// `slots` pinned buffers, so it never waits for the GPU to drain its queue, which a copy from
// pageable memory may do (the runtime stages small pageable copies synchronously). A slot is
// refilled only once its previous copy is over: the host waits only when it runs `slots`
// uploads ahead of the GPU.
class PinnedRing {
 public:
  explicit PinnedRing(int slots = 4) : slots_(slots) {}
  // As upload() above, on the current device's compute stream.
  void upload(void* dst, const void* src, size_t nbytes);
  int64_t uploads() const { return uploads_; }
  int64_t waits() const { return waits_; }  // uploads that found their slot's copy still running

 private:
  std::vector<PinnedBuffer> slots_;
  size_t next_ = 0;
  int64_t uploads_ = 0, waits_ = 0;
};

}  // namespace kiln::cuda
