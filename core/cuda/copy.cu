// CUDA copy and fill: the strided dtype-converting copy kernel, the fill kernel, and the host logic
// that routes host<->device and device<->device copies through them.
#include <cstdint>
#include <cstring>

#include "core/backend.h"
#include "core/cpu/elem.h"
#include "core/cuda/copy.h"
#include "core/cuda/dtype.cuh"
#include "core/cuda/pinned.h"
#include "core/cuda/runtime.h"
#include "core/cuda/strided.cuh"
#include "core/env_switch.h"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

template <typename I>
__global__ void convert_kernel(char* dst, DType dt, const char* src, DType st, StridedIter<2> it,
                               I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[2];
    it.offsets(i, off);
    store_from_double(dst, dt, off[0], load_as_double(src, st, off[1]));
  }
}

template <typename T, typename I>
__global__ void strided_copy_kernel(T* dst, const T* src, StridedIter<2> it, I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[2];
    it.offsets(i, off);
    dst[off[0]] = src[off[1]];
  }
}

template <typename T, typename I>
__global__ void fill_kernel(T* dst, T v, StridedIter<1> it, I n) {
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[1];
    it.offsets(i, off);
    dst[off[0]] = v;
  }
}

template <typename T, typename I>
void launch_strided_copy(const Tensor& dst, const Tensor& src, const StridedIter<2>& it, I n) {
  strided_copy_kernel<T, I><<<blocks_for(n, kThreads), kThreads, 0, compute_stream()>>>(
      static_cast<T*>(dst.raw()), static_cast<const T*>(src.raw()), it, n);
  KILN_CUDA_CHECK_LAUNCH();
}

// A same-dtype copy whose innermost (coalesced) dim is contiguous in both operands, a multiple
// of 16 bytes long, with every other stride and both base pointers 16-byte aligned, is a strided
// copy of 16-byte elements: rewrites `it` so (sizes and strides in 16-byte units) and returns
// true. A layout change such as a narrowed column block (rope_qkv_packed's v) then moves 16 bytes
// a thread instead of 2.
// KILN_COPY_VEC=0 turns it off.
EnvSwitch g_copy_vec("KILN_COPY_VEC", /*default_on=*/true);
bool widen_to_16_bytes(StridedIter<2>& it, const Tensor& dst, const Tensor& src) {
  const int64_t es = static_cast<int64_t>(dtype_size(dst.dtype()));
  if (!g_copy_vec.on() || it.ndim == 0 || 16 % es != 0) return false;
  const int64_t per = 16 / es, in = it.ndim - 1;
  if (it.stride[0][in] != 1 || it.stride[1][in] != 1 || it.size[in] % per != 0) return false;
  if (reinterpret_cast<uintptr_t>(dst.raw()) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src.raw()) % 16 != 0)
    return false;
  for (int d = 0; d < in; ++d)
    if (it.stride[0][d] % per != 0 || it.stride[1][d] % per != 0) return false;
  it.size[in] /= per;
  for (int d = 0; d < in; ++d) {
    it.stride[0][d] /= per;
    it.stride[1][d] /= per;
  }
  return true;
}

template <typename I>
void launch_convert(const Tensor& dst, const Tensor& src, const StridedIter<2>& it, I n) {
  if (dst.dtype() == src.dtype()) {
    switch (dtype_size(dst.dtype())) {
      case 1:
        return launch_strided_copy<uint8_t>(dst, src, it, n);
      case 2:
        return launch_strided_copy<uint16_t>(dst, src, it, n);
      case 4:
        return launch_strided_copy<uint32_t>(dst, src, it, n);
      case 8:
        return launch_strided_copy<uint64_t>(dst, src, it, n);
    }
  }
  convert_kernel<I><<<blocks_for(n, kThreads), kThreads, 0, compute_stream()>>>(
      static_cast<char*>(dst.raw()), dst.dtype(), static_cast<const char*>(src.raw()), src.dtype(),
      it, n);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T, typename I>
void launch_fill(const Tensor& dst, T v, const StridedIter<1>& it, I n) {
  fill_kernel<T, I><<<blocks_for(n, kThreads), kThreads, 0, compute_stream()>>>(
      static_cast<T*>(dst.raw()), v, it, n);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void fill_with(const Tensor& dst, const void* bits) {
  T v;
  std::memcpy(&v, bits, sizeof(T));
  StridedIter<1> it = make_strided_iter<1>(dst.shape(), {dst.strides()});
  const int64_t n = dst.numel();
  if (fits_int32(it, n)) return launch_fill<T, uint32_t>(dst, v, it, static_cast<uint32_t>(n));
  launch_fill<T, int64_t>(dst, v, it, n);
}

void sync_compute() { KILN_CUDA_CHECK(cudaStreamSynchronize(compute_stream())); }

// Host -> device. Host memory may be reused when this returns.
void copy_h2d(const Tensor& dst, const Tensor& src) {
  DeviceGuard g(device_of(dst));
  Tensor s = raw::contiguous(src);  // host copy when src is strided
  if (dst.is_contiguous() && dst.dtype() == s.dtype()) {
    upload(dst.raw(), s.raw(), s.nbytes());
    return;
  }
  Tensor tmp = Tensor::empty(s.shape(), s.dtype(), dst.device());
  upload(tmp.raw(), s.raw(), s.nbytes());
  convert_on_device(dst, tmp);  // tmp is freed after; later stream work orders behind the kernel
}

// Device -> host. Synchronises the compute stream before the host reads.
void copy_d2h(const Tensor& dst, const Tensor& src) {
  DeviceGuard g(device_of(src));
  Tensor s = src;
  if (!src.is_contiguous() || src.dtype() != dst.dtype()) {
    s = Tensor::empty(src.shape(), dst.dtype(), src.device());
    convert_on_device(s, src);
  }
  if (dst.is_contiguous()) {
    KILN_CUDA_CHECK(
        cudaMemcpyAsync(dst.raw(), s.raw(), s.nbytes(), cudaMemcpyDeviceToHost, compute_stream()));
    sync_compute();
    return;
  }
  Tensor host = Tensor::empty(s.shape(), s.dtype());
  KILN_CUDA_CHECK(
      cudaMemcpyAsync(host.raw(), s.raw(), s.nbytes(), cudaMemcpyDeviceToHost, compute_stream()));
  sync_compute();
  raw::copy(dst, host);  // host strided copy
}

// Device -> device, possibly across devices.
void copy_d2d(const Tensor& dst, const Tensor& src) {
  const int dd = device_of(dst), sd = device_of(src);
  if (dd == sd) {
    DeviceGuard g(dd);
    if (dst.is_contiguous() && src.is_contiguous() && dst.dtype() == src.dtype()) {
      KILN_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice,
                                      compute_stream()));
      return;
    }
    convert_on_device(dst, src);
    return;
  }
  // Across devices: make src contiguous on its device, wait for it, copy peer to peer on the
  // destination's stream, convert there if needed, and wait so the temporaries may be freed.
  Tensor s;
  {
    DeviceGuard g(sd);
    s = raw::contiguous(src);
    sync_compute();
  }
  DeviceGuard g(dd);
  const bool direct = dst.is_contiguous() && dst.dtype() == s.dtype();
  Tensor tmp = direct ? dst : Tensor::empty(s.shape(), s.dtype(), dst.device());
  KILN_CUDA_CHECK(cudaMemcpyPeerAsync(tmp.raw(), dd, s.raw(), sd, s.nbytes(), compute_stream()));
  if (!direct) convert_on_device(dst, tmp);
  sync_compute();
}

}  // namespace

void convert_on_device(const Tensor& dst, const Tensor& src) {
  KILN_CHECK(dst.shape() == src.shape())
      << "convert_on_device: " << src.str() << " into " << dst.str();
  const int64_t n = dst.numel();
  if (n == 0) return;
  StridedIter<2> it = make_strided_iter<2>(dst.shape(), {dst.strides(), src.strides()});
  if (dst.dtype() == src.dtype() && widen_to_16_bytes(it, dst, src)) {
    const int64_t nv = n * static_cast<int64_t>(dtype_size(dst.dtype())) / 16;
    if (fits_int32(it, nv)) return launch_strided_copy<uint4, uint32_t>(dst, src, it, nv);
    return launch_strided_copy<uint4, int64_t>(dst, src, it, nv);
  }
  if (fits_int32(it, n)) return launch_convert<uint32_t>(dst, src, it, static_cast<uint32_t>(n));
  launch_convert<int64_t>(dst, src, it, n);
}

void copy_tensor(const Tensor& dst, const Tensor& src) {
  KILN_CHECK(dst.shape() == src.shape())
      << "copy: shape " << shape_str(src.shape()) << " into " << shape_str(dst.shape());
  if (dst.numel() == 0) return;
  const bool dc = dst.device().is_cuda(), sc = src.device().is_cuda();
  if (dc && sc) return copy_d2d(dst, src);
  if (dc) return copy_h2d(dst, src);
  KILN_CHECK(sc) << "internal: CUDA copy between two host tensors";
  copy_d2h(dst, src);
}

void fill_tensor(const Tensor& dst, double v) {
  KILN_CHECK(dst.device().is_cuda()) << "internal: CUDA fill on " << dst.str();
  if (dst.numel() == 0) return;
  DeviceGuard g(device_of(dst));
  uint64_t bits = 0;
  cpu::store(&bits, dst.dtype(), 0, v);  // the element's bits, rounded exactly as on the CPU
  const size_t es = dtype_size(dst.dtype());
  bool bytes_equal = true;
  const unsigned char* b = reinterpret_cast<const unsigned char*>(&bits);
  for (size_t i = 0; i < es; ++i) {
    bytes_equal = bytes_equal && b[i] == b[0];
  }
  if (dst.is_contiguous() && bytes_equal) {
    KILN_CUDA_CHECK(cudaMemsetAsync(dst.raw(), b[0], dst.nbytes(), compute_stream()));
    return;
  }
  switch (es) {
    case 1:
      return fill_with<uint8_t>(dst, &bits);
    case 2:
      return fill_with<uint16_t>(dst, &bits);
    case 4:
      return fill_with<uint32_t>(dst, &bits);
    case 8:
      return fill_with<uint64_t>(dst, &bits);
  }
  KILN_CHECK(false) << "internal: fill of dtype " << dst.dtype();
}

}  // namespace kiln::cuda
