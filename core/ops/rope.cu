// CUDA kernels of rotary_embedding (core/ops/rope.cc). A first kernel builds the (T, D/2) cos / sin
// tables with the CPU op's arithmetic (inverse frequency, angle, cos and sin in f64, then rounded
// to the compute type); a second rotates each pair (i, i + D/2) of every (b, h, t) row, one thread
// per pair, reading x through its strides (no contiguous copy) and writing a contiguous result.
// 256-thread blocks, grid-stride loops.
#include "core/backend.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

constexpr const char* kOp = "rotary_embedding";

template <typename A>
__global__ void angle_table_kernel(A* __restrict__ cos_t, A* __restrict__ sin_t, int64_t t_len,
                                   int64_t d, double theta, int64_t offset) {
  const int64_t half = d / 2;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < t_len * half;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = k / half, i = k % half;
    const double inv_freq = 1.0 / pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(d));
    const double a = static_cast<double>(offset + t) * inv_freq;
    cos_t[k] = static_cast<A>(cos(a));
    sin_t[k] = static_cast<A>(sin(a));
  }
}

struct Dims {
  int64_t b, h, t, d;      // x's shape
  int64_t sb, sh, st, sd;  // x's strides (elements)
};

// out (B, H, T, D) contiguous = x rotated by +angle (sign 1) or -angle (sign -1).
template <typename T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ out,
                            const acc_t<T>* __restrict__ cos_t, const acc_t<T>* __restrict__ sin_t,
                            Dims s, acc_t<T> sign) {
  using A = acc_t<T>;
  const int64_t half = s.d / 2, total = s.b * s.h * s.t * half;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k % half, r = k / half;  // r: row index over (B, H, T)
    const int64_t t = r % s.t, h = (r / s.t) % s.h, b = r / (s.t * s.h);
    const T* xr = x + b * s.sb + h * s.sh + t * s.st;
    const A x1 = to_acc(xr[i * s.sd]), x2 = to_acc(xr[(i + half) * s.sd]);
    const A c = cos_t[t * half + i], sn = sign * sin_t[t * half + i];
    T* o = out + r * s.d;
    o[i] = from_acc<T>(x1 * c - x2 * sn);
    o[i + half] = from_acc<T>(x2 * c + x1 * sn);
  }
}

}  // namespace

// x (B, H, T, D), any strides, on the current device. Returns x rotated by +angle (or by -angle
// when inverse, the backward), contiguous, in x's dtype.
Tensor rope_forward(const Tensor& x, double theta, int64_t offset, bool inverse) {
  check_on_current_device(kOp, "x", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const Dims s{x.size(0),      x.size(1),      x.size(2),      x.size(3),
               x.strides()[0], x.strides()[1], x.strides()[2], x.strides()[3]};
  const int64_t half = s.d / 2;
  if (x.numel() == 0 || half == 0) return out;
  const DType ad = x.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  Tensor cos_t = Tensor::empty({s.t, half}, ad, x.device());
  Tensor sin_t = Tensor::empty({s.t, half}, ad, x.device());
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), kOp, T, {
    using A = acc_t<T>;
    angle_table_kernel<A><<<blocks_for(s.t * half), 256, 0, compute_stream()>>>(
        cos_t.data<A>(), sin_t.data<A>(), s.t, s.d, theta, offset);
    KILN_CUDA_CHECK_LAUNCH();
    rope_kernel<T><<<blocks_for(x.numel() / 2), 256, 0, compute_stream()>>>(
        x.data<T>(), out.data<T>(), cos_t.data<A>(), sin_t.data<A>(), s, inverse ? A(-1) : A(1));
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

}  // namespace kiln::cuda
