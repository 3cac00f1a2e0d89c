// CUDA kernels of softmax / log_softmax over the last dim and their backward
// (core/ops/softmax.cc, which moves any other dim last first). One block of row_threads(n)
// threads (32..1024) per row, grid-stride over rows: block max, block sum of exp(x - max) in the
// compute type, then the write pass. Backward: one block per row, a block sum, then the write.
#include "core/backend.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

template <typename T, bool kLog>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    T* yr = y + r * n;
    A m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = max(m, to_acc(xr[j]));
    m = block_max(m, scratch);
    A s = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += exp(to_acc(xr[j]) - m);
    s = block_sum(s, scratch);
    if constexpr (kLog) {
      const A lse = m + log(s);
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        yr[j] = from_acc<T>(to_acc(xr[j]) - lse);
    } else {
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        yr[j] = from_acc<T>(exp(to_acc(xr[j]) - m) / s);
    }
  }
}

// softmax: dx = y * (g - sum(g * y)); log_softmax: dx = g - exp(y) * sum(g).
template <typename T, bool kLog>
__global__ void __launch_bounds__(kMaxRowThreads)
    softmax_backward_kernel(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ dx,
                            int64_t rows, int64_t n) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *gr = g + r * n, *yr = y + r * n;
    T* dr = dx + r * n;
    A s = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      s += kLog ? to_acc(gr[j]) : to_acc(gr[j]) * to_acc(yr[j]);
    s = block_sum(s, scratch);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const A gv = to_acc(gr[j]), yv = to_acc(yr[j]);
      dr[j] = from_acc<T>(kLog ? gv - exp(yv) * s : yv * (gv - s));
    }
  }
}

}  // namespace

// x (..., n), softmax over the last dim. Returns a contiguous tensor of x's shape and dtype.
Tensor softmax_last_dim(const Tensor& x, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_on_current_device(op, "x", x);
  Tensor xc = raw::contiguous(x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.dim() == 0 ? 1 : x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  if (rows == 0) return y;
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, {
    if (log) {
      softmax_kernel<T, true><<<row_blocks(rows), row_threads(n), 0, compute_stream()>>>(
          xc.data<T>(), y.data<T>(), rows, n);
    } else {
      softmax_kernel<T, false><<<row_blocks(rows), row_threads(n), 0, compute_stream()>>>(
          xc.data<T>(), y.data<T>(), rows, n);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return y;
}

// g, y (..., n): the gradient of softmax_last_dim from its output y.
Tensor softmax_last_dim_backward(const Tensor& g, const Tensor& y, bool log) {
  const char* op = log ? "log_softmax" : "softmax";
  check_on_current_device(op, "grad", g);
  Tensor gc = raw::convert(g, y.dtype()), yc = raw::contiguous(y);
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  const int64_t n = y.dim() == 0 ? 1 : y.size(-1), rows = n == 0 ? 0 : y.numel() / n;
  if (rows == 0) return dx;
  KILN_CUDA_DISPATCH_FLOAT(y.dtype(), op, T, {
    if (log) {
      softmax_backward_kernel<T, true><<<row_blocks(rows), row_threads(n), 0, compute_stream()>>>(
          gc.data<T>(), yc.data<T>(), dx.data<T>(), rows, n);
    } else {
      softmax_backward_kernel<T, false><<<row_blocks(rows), row_threads(n), 0, compute_stream()>>>(
          gc.data<T>(), yc.data<T>(), dx.data<T>(), rows, n);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return dx;
}

}  // namespace kiln::cuda
