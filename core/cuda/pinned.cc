// PinnedBuffer and the double-buffered pinned upload path.
#include "core/cuda/pinned.h"

#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/cuda/runtime.h"

namespace kiln::cuda {

PinnedBuffer::~PinnedBuffer() {
  if (in_flight_ && event_) (void)cudaEventSynchronize(event_);
  if (data_) (void)cudaFreeHost(data_);
  if (event_) (void)cudaEventDestroy(event_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : data_(o.data_),
      capacity_(o.capacity_),
      event_(o.event_),
      event_device_(o.event_device_),
      in_flight_(o.in_flight_) {
  o.data_ = nullptr;
  o.capacity_ = 0;
  o.event_ = nullptr;
  o.in_flight_ = false;
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    this->~PinnedBuffer();
    new (this) PinnedBuffer(std::move(o));
  }
  return *this;
}

void PinnedBuffer::reserve(size_t nbytes) {
  if (nbytes <= capacity_) return;
  wait();
  if (data_) KILN_CUDA_CHECK(cudaFreeHost(data_));
  data_ = nullptr;
  capacity_ = 0;
  KILN_CUDA_CHECK(cudaHostAlloc(&data_, nbytes, cudaHostAllocPortable));
  capacity_ = nbytes;
}

void PinnedBuffer::copy_to_device(void* dst, size_t nbytes, cudaStream_t stream) {
  KILN_CHECK(nbytes <= capacity_) << "PinnedBuffer: copying " << nbytes << " bytes out of a "
                                  << capacity_ << "-byte buffer";
  if (stream == nullptr) stream = compute_stream();
  // Events belong to a device: (re)create ours on the stream's (the current) device.
  const int dev = current_device();
  if (event_ == nullptr || event_device_ != dev) {
    wait();
    if (event_) KILN_CUDA_CHECK(cudaEventDestroy(event_));
    event_ = nullptr;
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    event_device_ = dev;
  }
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst, data_, nbytes, cudaMemcpyHostToDevice, stream));
  KILN_CUDA_CHECK(cudaEventRecord(event_, stream));
  in_flight_ = true;
}

void PinnedBuffer::wait() {
  if (!in_flight_) return;
  KILN_CUDA_CHECK(cudaEventSynchronize(event_));
  in_flight_ = false;
}

bool PinnedBuffer::busy() {
  if (!in_flight_) return false;
  const cudaError_t e = cudaEventQuery(event_);
  if (e == cudaErrorNotReady) return true;
  KILN_CUDA_CHECK(e);
  in_flight_ = false;
  return false;
}

void PinnedRing::upload(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  PinnedBuffer& b = slots_[next_];
  next_ = (next_ + 1) % slots_.size();
  ++uploads_;
  if (b.busy()) ++waits_;
  b.wait();
  b.reserve(nbytes);
  std::memcpy(b.data(), src, nbytes);
  b.copy_to_device(dst, nbytes);
}

namespace {

constexpr size_t kChunk = size_t{8} << 20;  // bytes per staging buffer
constexpr size_t kPinnedMin = 256 << 10;    // smaller copies go straight from pageable memory

// Two pinned buffers per device; chunk i goes through buffer i % 2.
struct Stager {
  std::mutex mu;
  PinnedBuffer buf[2];
};

Stager& stager(int device) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<Stager>> all;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(all.size())) all.resize(device + 1);
  if (!all[device]) all[device] = std::make_unique<Stager>();
  return *all[device];
}

}  // namespace

void upload(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  cudaStream_t s = compute_stream();
  if (nbytes < kPinnedMin) {
    // Pageable source: the runtime stages it and returns once src may be reused.
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, s));
    return;
  }
  Stager& st = stager(current_device());
  std::lock_guard<std::mutex> lock(st.mu);
  size_t done = 0;
  for (int i = 0; done < nbytes; ++i) {
    PinnedBuffer& b = st.buf[i % 2];
    const size_t n = std::min(kChunk, nbytes - done);
    b.wait();  // the DMA out of this buffer two chunks ago must be over
    b.reserve(kChunk);
    std::memcpy(b.data(), static_cast<const char*>(src) + done, n);
    b.copy_to_device(static_cast<char*>(dst) + done, n, s);
    done += n;
  }
}

}  // namespace kiln::cuda
