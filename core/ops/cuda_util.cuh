// Shared pieces of the hand-written CUDA op kernels in core/ops/*.cu: the element types a kernel is
// instantiated for and their conversion to and from the compute type (f32, or f64 for f64
// tensors), a dtype dispatch for the host launchers, fixed-order (deterministic) warp and block
// reductions, aligned vector loads, and launch-argument checks. Include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "core/check.h"
#include "core/cuda/runtime.h"
#include "core/tensor.h"

namespace kiln::cuda {

// ---- element and compute types ----

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
// The type a kernel computes in for element type T: f64 for f64, f32 for everything else.
template <typename T>
using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

// Rounds a compute value to T (round to nearest even, as the CPU conversions in core/dtype.h).
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// Calls the statement list with `T` bound to the element type of dtype (f32, f64, bf16, f16);
// other dtypes are a kiln::Error naming `op`.
#define KILN_CUDA_DISPATCH_FLOAT(dtype, op, T, ...)                       \
  do {                                                                    \
    switch (dtype) {                                                      \
      case ::kiln::DType::kF32: {                                         \
        using T = float;                                                  \
        __VA_ARGS__;                                                      \
        break;                                                            \
      }                                                                   \
      case ::kiln::DType::kF64: {                                         \
        using T = double;                                                 \
        __VA_ARGS__;                                                      \
        break;                                                            \
      }                                                                   \
      case ::kiln::DType::kBF16: {                                        \
        using T = __nv_bfloat16;                                          \
        __VA_ARGS__;                                                      \
        break;                                                            \
      }                                                                   \
      case ::kiln::DType::kF16: {                                         \
        using T = __half;                                                 \
        __VA_ARGS__;                                                      \
        break;                                                            \
      }                                                                   \
      default:                                                            \
        KILN_CHECK(false) << op << ": no CUDA kernel for dtype " << dtype \
                          << " (supported: f32, f64, bf16, f16)";         \
    }                                                                     \
  } while (0)

// ---- reductions (fixed order: the same inputs and launch shape give the same bits) ----

// Butterfly sum over the 32 lanes; every lane ends with the same bits (each step adds a pair of
// values that both partners hold, and addition is commutative).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block, returned to every thread. REQUIRES: blockDim.x is a multiple of 32 (at most
// 1024), every thread of the block calls it, `scratch` holds 32 values. Safe to call repeatedly
// with the same scratch.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();  // earlier readers of scratch are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? scratch[lane] : A(0));
}
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < nwarps ? scratch[lane] : scratch[0]);
}

// ---- vector loads ----

// kN elements of T loaded or stored as one access of sizeof(T) * kN bytes.
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Vec {
  T v[kN];
};

// Elements per 16-byte access for T when every pointer in ptrs is 16-byte aligned, else 1.
template <typename T>
inline int vec_width(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 1;
  return static_cast<int>(16 / sizeof(T));
}

// ---- launch helpers ----

// The most threads row_threads() gives; kernels launched with it declare
// __launch_bounds__(kMaxRowThreads) so the compiler keeps their registers within what a block of
// that size may use (a launch would otherwise fail with "too many resources requested").
constexpr int kMaxRowThreads = 1024;

// Threads per block for a kernel that gives one block to each row of c elements: a multiple of 32
// with about 4 elements per thread, at most max_threads (<= kMaxRowThreads).
inline int row_threads(int64_t c, int max_threads = kMaxRowThreads) {
  int t = 32;
  while (t < max_threads && static_cast<int64_t>(t) * 4 < c) t *= 2;
  return t;
}

// Blocks for a grid-stride loop over `rows` rows, one block per row up to the grid limit.
inline unsigned int row_blocks(int64_t rows) {
  constexpr int64_t kMax = 1 << 20;
  return static_cast<unsigned int>(rows < 1 ? 1 : (rows > kMax ? kMax : rows));
}

// t is on the current CUDA device (kernels launch on that device's compute stream).
inline void check_on_current_device(const char* op, const char* arg, const Tensor& t) {
  KILN_CHECK(t.device().is_cuda() && t.device().index == current_device())
      << op << ": " << arg << " is on " << t.device()
      << " but the current CUDA device is cuda:" << current_device() << " (got " << t.str() << ")";
}

}  // namespace kiln::cuda
