// CUDA kernel of dropout (core/ops/dropout.cc). Draws the CPU op's mask bit for bit: element i is
// kept iff rng_uniform_f(seed, offset + i) >= p in f32, with device copies of the counter-based
// generator of core/random.h (the same integer arithmetic), and kept values are multiplied by the
// same f32 (f64 for f64) scale. One thread per element, 256-thread blocks, grid-stride loop.
#include "core/backend.h"
#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace {

// Device twins of rng_bits / rng_uniform_f in core/random.h; keep the arithmetic identical.
__device__ __forceinline__ uint64_t rng_bits_dev(uint64_t seed, uint64_t c) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + c * 0xD1B54A32D192ED03ull + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ float rng_uniform_f_dev(uint64_t seed, uint64_t c) {
  return static_cast<float>(rng_bits_dev(seed, c) >> 40) * 0x1.0p-24f;
}

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t n, float p,
                               acc_t<T> keep_scale, uint64_t seed, uint64_t offset) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool keep = rng_uniform_f_dev(seed, offset + static_cast<uint64_t>(i)) >= p;
    out[i] = from_acc<T>(keep ? to_acc(x[i]) * keep_scale : A(0));  // a lone multiply: no FMA
  }
}

}  // namespace

// x (any shape, any strides) on the current device: the dropout of x, contiguous, in x's dtype.
// Element i is the i-th in row-major order over x's shape, as on the CPU.
Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  check_on_current_device("dropout", "x", x);
  Tensor xc = raw::contiguous(x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  if (n == 0) return out;
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), "dropout", T, {
    using A = acc_t<T>;
    dropout_kernel<T><<<blocks_for(n), 256, 0, compute_stream()>>>(
        xc.data<T>(), out.data<T>(), n, static_cast<float>(p), static_cast<A>(1.0 / (1.0 - p)),
        seed, offset);
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

}  // namespace kiln::cuda
