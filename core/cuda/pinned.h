// Pinned (page-locked) host memory for host-to-device uploads. PinnedBuffer is a reusable staging
// buffer a data loader fills and copies out asynchronously; upload() copies pageable host memory to
// the GPU through a per-device pair of pinned buffers, so the memcpy into one overlaps the DMA out
// of the other. Only compiled with KILN_WITH_CUDA.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

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

}  // namespace kiln::cuda
