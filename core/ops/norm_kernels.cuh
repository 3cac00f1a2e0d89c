// CUDA kernels and host launchers shared by layer_norm and rms_norm (core/ops/layernorm.cu,
// core/ops/rmsnorm.cu), with and without the fused residual add in front. Two kernel families:
//
// Warp per row (bf16 / f16 / f32 with C a multiple of one 16-byte vector, at most kWarpMaxVecs
// vectors per lane, i.e. C <= 2048 for bf16 / f16 and C <= 1024 for f32, 16-byte aligned tensors):
//   forward   each warp holds a row in registers (16-byte loads, one pass over x), [s = x +
//             residual, stored], mean then the centred variance from the registers (f32), warp
//             shuffles only, y = h * w (+ b); a grid of resident blocks strides over the rows (w
//             and b re-read for each row: L1 hits);
//   backward  one block of kBwdWarps warps per chunk of rows: each warp computes dx of its rows
//             the same way and adds gy * h and gy into its own shared-memory accumulators (each
//             lane owns its columns: no atomics, no barriers in the row loop); the block adds its
//             warps' accumulators in warp order into per-chunk partials, and dw_reduce_kernel
//             adds the partials of each column in a fixed order. The chunking depends only on the
//             shape.
//
// Warp group per row (the backward of wide rows: those the warp-per-row kernels give 5 vectors a
// lane or more, i.e. C > 1024 for bf16 / f16; KILN_NORM_KERNEL=warp / group choose):
//   backward  one 4-warp block per chunk of at least 32 rows (512 chunks at most), the block on
//             one row at a time (2
//             vectors a thread at most: C <= 2048 for bf16 / f16, 1024 for f32), its columns'
//             dW / dB sums in registers, the next row loaded while the block works on this one
//             (1.5% faster than loading it after at C = 2048), the row's dot products added over
//             the 4 warps in
//             shared memory; per-chunk partials, then dw_reduce_kernel. More, smaller blocks keep
//             more loads in flight than the warp-per-row backward (2 blocks of 8 warps an SM at
//             C = 2048, 96 registers of row data a lane).
//
// Block per row (everything else: f64, C not a multiple of the vector, larger C, unaligned
// views; and every shape when KILN_NORM_KERNEL=general):
//   forward   one block per row: [s = x + residual, stored], statistics in the compute type (two
//             passes for layer norm: mean, then the centred variance), y = h * w (+ b);
//   backward  one block per row for dx (+ the gradient reaching the residual stream), then dW / db
//             without atomics: (32 x 8)-thread blocks sum a tile of 32 columns over a fixed chunk
//             of rows into per-chunk partials, which dw_reduce_kernel adds in a fixed order.
// Both are deterministic: the result depends only on the shapes (and the family), never on
// scheduling.
// Include only from .cu files.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "core/ops/cuda_util.cuh"

namespace kiln::cuda {
namespace norm {

// ---- kernels ----

// Row r of x (and residual) -> y, optionally sum = x + residual (rounded to T, and the rounded
// value is what gets normalised), mean (layer norm only) and rstd in the compute type.
// x, res and sum_out are not __restrict__: with a residual the kernel re-reads sum_out through xr.
template <typename T, bool kRms, bool kResidual>
__global__ void __launch_bounds__(kMaxRowThreads)
    forward_kernel(const T* x, const T* res, const T* __restrict__ w, const T* __restrict__ b,
                   T* __restrict__ y, T* sum_out, acc_t<T>* __restrict__ mean_out,
                   acc_t<T>* __restrict__ rstd_out, int64_t rows, int64_t c, acc_t<T> eps) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * c;
    if constexpr (kResidual) {  // s = x + residual, stored; normalise the stored (rounded) s
      const T* rr = res + r * c;
      T* sr = sum_out + r * c;
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
        sr[j] = from_acc<T>(to_acc(xr[j]) + to_acc(rr[j]));
      xr = sr;  // each thread re-reads only the elements it wrote itself
    }
    A m = 0;
    A rs;
    if constexpr (kRms) {
      A ss = 0;
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
        const A v = to_acc(xr[j]);
        ss += v * v;
      }
      ss = block_sum(ss, scratch);
      rs = A(1) / sqrt(ss / A(c) + eps);
    } else {
      A s = 0;
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += to_acc(xr[j]);
      m = block_sum(s, scratch) / A(c);
      A v = 0;
      for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
        const A d = to_acc(xr[j]) - m;
        v += d * d;
      }
      v = block_sum(v, scratch);
      rs = A(1) / sqrt(v / A(c) + eps);
    }
    if (threadIdx.x == 0) {
      if constexpr (!kRms) mean_out[r] = m;
      rstd_out[r] = rs;
    }
    T* yr = y + r * c;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      if constexpr (kRms) {
        yr[j] = from_acc<T>(to_acc(xr[j]) * rs * to_acc(w[j]));
      } else {
        const A h = (to_acc(xr[j]) - m) * rs;
        yr[j] = from_acc<T>(b != nullptr ? h * to_acc(w[j]) + to_acc(b[j]) : h * to_acc(w[j]));
      }
    }
  }
}

// dx for row r, with h = (x - mean) * rstd (layer norm) or x * rstd (rms) and gh = gy * w:
//   layer norm  dx = rstd * (gh - mean(gh) - h * mean(gh * h))
//   rms         dx = rstd * (gh - h * mean(gh * h))
// plus gres (the gradient that reached the residual-stream output) when given.
template <typename T, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads)
    backward_dx_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                       const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                       const T* __restrict__ gres, T* __restrict__ dx, int64_t rows, int64_t c) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * c, *gr = gy + r * c;
    const A m = kRms ? A(0) : mean[r], rs = rstd[r];
    A sg = 0, sgh = 0;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      const A gh = to_acc(gr[j]) * to_acc(w[j]);
      if constexpr (!kRms) sg += gh;
      sgh += gh * ((to_acc(xr[j]) - m) * rs);
    }
    if constexpr (!kRms) sg = block_sum(sg, scratch) / A(c);
    sgh = block_sum(sgh, scratch) / A(c);
    T* dr = dx + r * c;
    const T* rr = gres != nullptr ? gres + r * c : nullptr;
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      const A gh = to_acc(gr[j]) * to_acc(w[j]);
      A d;
      if constexpr (kRms) {
        d = rs * (gh - to_acc(xr[j]) * rs * sgh);
      } else {
        d = rs * (gh - sg - (to_acc(xr[j]) - m) * rs * sgh);
      }
      if (rr != nullptr) d += to_acc(rr[j]);
      dr[j] = from_acc<T>(d);
    }
  }
}

constexpr int kTileCols = 32;  // columns per dW block (one warp wide)
constexpr int kTileRows = 8;   // row lanes per dW block

// Partial dW (and dB) of rows [chunk * rows_per_chunk, +rows_per_chunk) for 32 columns:
// pdw[chunk, col] = sum_rows gy * h, pdb[chunk, col] = sum_rows gy. Block (32, 8); grid
// (ceil(c / 32), chunks). Each thread sums every 8th row of the chunk, then the 8 lanes are added
// in lane order.
template <typename T, bool kRms>
__global__ void backward_dw_partial_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                                           const acc_t<T>* __restrict__ mean,
                                           const acc_t<T>* __restrict__ rstd,
                                           acc_t<T>* __restrict__ pdw, acc_t<T>* __restrict__ pdb,
                                           int64_t rows, int64_t c, int64_t rows_per_chunk) {
  using A = acc_t<T>;
  __shared__ A sw[kTileRows][kTileCols + 1];
  __shared__ A sb[kTileRows][kTileCols + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  A aw = 0, ab = 0;
  if (col < c) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTileRows) {
      const A g = to_acc(gy[r * c + col]);
      const A h =
          kRms ? to_acc(x[r * c + col]) * rstd[r] : (to_acc(x[r * c + col]) - mean[r]) * rstd[r];
      aw += g * h;
      ab += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < c) {
    A tw = 0, tb = 0;
    for (int k = 0; k < kTileRows; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    pdw[static_cast<int64_t>(blockIdx.y) * c + col] = tw;
    if (pdb != nullptr) pdb[static_cast<int64_t>(blockIdx.y) * c + col] = tb;
  }
}

// ---- warp per row ----

constexpr int kWarpMaxVecs = 8;  // 16-byte vectors per lane at most
constexpr int kFwdWarps = 4;     // warps (rows in flight) per forward block
constexpr int kBwdWarps = 8;     // warps per backward block (one chunk of rows per block)
// At most 256 chunks (so that at C = 1600 every block is resident at once on 132 SMs at 2
// blocks each; 512 took 6% longer there, 1024 longer at both widths), of at least 64 rows.
constexpr int kBwdMaxChunks = 256;
constexpr int kBwdMinChunkRows = 64;

// Lane `lane` of a row's warp holds the 16-byte vectors q = k * 32 + lane (k < kNV) of the row,
// those with q < nvec = C / (16 / sizeof(T)).
template <typename T>
constexpr int kVecElems = static_cast<int>(16 / sizeof(T));

// Blocks per SM the backward kernel's registers are capped for (shared memory allows about as
// many at the C each kNV serves; 4 at C = 768 for 2-byte types, 2 at C = 1600). With kGres the
// row of the residual gradient needs 4 * kNV more registers.
constexpr int bwd_min_blocks(int nv, bool gres) {
  return nv <= 2 ? 4 : (nv == 3 ? (gres ? 3 : 4) : (nv == 4 ? (gres ? 2 : 3) : 2));
}

// A zero the compiler cannot see through. Offsetting the row loop's loads of w and b by it keeps
// them in the loop: hoisted out, w and b would stay in registers for the whole loop, converted to
// f32 (twice the registers of the packed 16-byte vectors); they are L1 hits.
__device__ __forceinline__ int opaque_zero() {
  int z;
  asm volatile("mov.u32 %0, 0;" : "=r"(z));
  return z;
}

// Makes the compiler forget what it knows of the 16-byte vector's registers (it costs no
// instruction): the f32 values converted from them before this point are converted again after
// it instead of being kept live (for bf16 that would double the registers a row takes).
template <typename V>
__device__ __forceinline__ void launder(V& v) {
  static_assert(sizeof(V) == 16);
  uint4 u;
  memcpy(&u, &v, 16);
  asm volatile("" : "+r"(u.x), "+r"(u.y), "+r"(u.z), "+r"(u.w));
  memcpy(&v, &u, 16);
}

// Row r of x (and residual) -> y, [sum = x + residual rounded to T], mean (layer norm) and rstd.
// The grid strides over rows, one warp per row.
template <typename T, bool kRms, bool kResidual, int kNV>
__global__ void __launch_bounds__(kFwdWarps * 32)
    forward_warp_kernel(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                        const T* __restrict__ b, T* __restrict__ y, T* __restrict__ sum_out,
                        acc_t<T>* __restrict__ mean_out, acc_t<T>* __restrict__ rstd_out,
                        int64_t rows, int c, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int kV = kVecElems<T>;
  using V = Vec<T, kV>;
  const int lane = threadIdx.x & 31, nvec = c / kV;
  const bool has_bias = !kRms && b != nullptr;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFwdWarps;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kFwdWarps + (threadIdx.x >> 5); r < rows;
       r += stride) {
    const int64_t off = r * c;
    const V* wr = reinterpret_cast<const V*>(w) + opaque_zero();
    const V* br = reinterpret_cast<const V*>(b) + opaque_zero();
    V v[kNV];
    if constexpr (kResidual) {  // s = x + residual, stored; normalise the stored (rounded) s
      V rv[kNV];
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        const int q = k * 32 + lane;
        if (q < nvec) {
          v[k] = reinterpret_cast<const V*>(x + off)[q];
          rv[k] = reinterpret_cast<const V*>(res + off)[q];
        }
      }
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        const int q = k * 32 + lane;
        if (q < nvec) {
#pragma unroll
          for (int e = 0; e < kV; ++e)
            v[k].v[e] = from_acc<T>(to_acc(v[k].v[e]) + to_acc(rv[k].v[e]));
          reinterpret_cast<V*>(sum_out + off)[q] = v[k];
        }
        launder(v[k]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        const int q = k * 32 + lane;
        if (q < nvec) v[k] = reinterpret_cast<const V*>(x + off)[q];
      }
    }
    A m = 0, rs;
    if constexpr (kRms) {
      A ss = 0;
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        if (k * 32 + lane < nvec) {
#pragma unroll
          for (int e = 0; e < kV; ++e) ss += to_acc(v[k].v[e]) * to_acc(v[k].v[e]);
        }
      }
      rs = A(1) / sqrt(warp_sum(ss) / A(c) + eps);
#pragma unroll
      for (int k = 0; k < kNV; ++k) launder(v[k]);
    } else {  // two passes over the registers: mean, then the centred variance
      A s = 0;
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        if (k * 32 + lane < nvec) {
#pragma unroll
          for (int e = 0; e < kV; ++e) s += to_acc(v[k].v[e]);
        }
      }
      m = warp_sum(s) / A(c);
#pragma unroll
      for (int k = 0; k < kNV; ++k) launder(v[k]);
      A d2 = 0;
#pragma unroll
      for (int k = 0; k < kNV; ++k) {
        if (k * 32 + lane < nvec) {
#pragma unroll
          for (int e = 0; e < kV; ++e) {
            const A d = to_acc(v[k].v[e]) - m;
            d2 += d * d;
          }
        }
      }
      rs = A(1) / sqrt(warp_sum(d2) / A(c) + eps);
#pragma unroll
      for (int k = 0; k < kNV; ++k) launder(v[k]);
    }
    if (lane == 0) {
      if constexpr (!kRms) mean_out[r] = m;
      rstd_out[r] = rs;
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * 32 + lane;
      if (q < nvec) {
        const V wv = wr[q];
        V bv;
        if (has_bias) bv = br[q];
        V o;
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          if constexpr (kRms) {
            o.v[e] = from_acc<T>(to_acc(v[k].v[e]) * rs * to_acc(wv.v[e]));
          } else {
            const A h = (to_acc(v[k].v[e]) - m) * rs;
            o.v[e] =
                from_acc<T>(has_bias ? h * to_acc(wv.v[e]) + to_acc(bv.v[e]) : h * to_acc(wv.v[e]));
          }
        }
        reinterpret_cast<V*>(y + off)[q] = o;
      }
    }
  }
}

// One chunk of rows [blockIdx.x * rows_per_chunk, +rows_per_chunk) per block of kBwdWarps warps,
// a warp per row (rows r0 + warp, r0 + warp + kBwdWarps, ...):
//   dx (when dx is given) as backward_dx_kernel, plus gres with kGres;
//   pdw[chunk, col] = sum of gy * h and pdb[chunk, col] = sum of gy over the chunk's rows (when
//   given). Each warp accumulates its rows in its own slice of the dynamic shared memory (dW then
//   dB, C values each, the vector q's values at [(part * nvec + q) * 4 + i]: lane-contiguous
//   16-byte accesses); the block then adds the slices in warp order.
// Dynamic shared memory: kBwdWarps * C * sizeof(A) * (pdw given + pdb given) bytes.
template <typename T, bool kRms, bool kGres, int kNV>
__global__ void __launch_bounds__(kBwdWarps * 32, bwd_min_blocks(kNV, kGres))
    backward_warp_kernel(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ w,
                         const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                         const T* __restrict__ gres, T* __restrict__ dx, acc_t<T>* __restrict__ pdw,
                         acc_t<T>* __restrict__ pdb, int64_t rows, int c, int64_t rows_per_chunk) {
  using A = acc_t<T>;
  constexpr int kV = kVecElems<T>;
  constexpr int kQ = static_cast<int>(16 / sizeof(A));  // accumulators per 16-byte access
  constexpr int kParts = kV / kQ;                       // 16-byte accumulator accesses per vector
  static_assert(kV % kQ == 0);
  using V = Vec<T, kV>;
  using VA = Vec<A, kQ>;
  extern __shared__ __align__(16) unsigned char norm_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nvec = c / kV;
  const bool do_dw = pdw != nullptr, do_db = pdb != nullptr;
  const int slice = c / kQ;  // VA entries per accumulator array
  VA* aw = reinterpret_cast<VA*>(norm_smem) + warp * (int(do_dw) + int(do_db)) * slice;
  VA* ab = do_dw ? aw + slice : aw;
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int q = k * 32 + lane;
    if (q < nvec) {
#pragma unroll
      for (int p = 0; p < kParts; ++p) {
        if (do_dw) aw[p * nvec + q] = VA{};
        if (do_db) ab[p * nvec + q] = VA{};
      }
    }
  }
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  for (int64_t r = r0 + warp; r < r1; r += kBwdWarps) {
    const int64_t off = r * c;
    const V* wr = reinterpret_cast<const V*>(w) + opaque_zero();
    const A m = kRms ? A(0) : mean[r], rs = rstd[r];
    V xv[kNV], gv[kNV], rv[kNV];
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * 32 + lane;
      if (q < nvec) {
        xv[k] = reinterpret_cast<const V*>(x + off)[q];
        gv[k] = reinterpret_cast<const V*>(gy + off)[q];
        if constexpr (kGres) rv[k] = reinterpret_cast<const V*>(gres + off)[q];
      }
    }
    A sg = 0, sgh = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * 32 + lane;
      if (q < nvec) {
        const V wv = wr[q];
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          const A gh = to_acc(gv[k].v[e]) * to_acc(wv.v[e]);
          const A h = kRms ? to_acc(xv[k].v[e]) * rs : (to_acc(xv[k].v[e]) - m) * rs;
          if constexpr (!kRms) sg += gh;
          sgh += gh * h;
        }
      }
    }
    if constexpr (!kRms) sg = warp_sum(sg) / A(c);
    sgh = warp_sum(sgh) / A(c);
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      launder(xv[k]);
      launder(gv[k]);
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * 32 + lane;
      if (q < nvec) {
        const V wv = wr[q];
        A h[kV];
#pragma unroll
        for (int e = 0; e < kV; ++e)
          h[e] = kRms ? to_acc(xv[k].v[e]) * rs : (to_acc(xv[k].v[e]) - m) * rs;
        if (dx != nullptr) {
          V o;
#pragma unroll
          for (int e = 0; e < kV; ++e) {
            const A gh = to_acc(gv[k].v[e]) * to_acc(wv.v[e]);
            A d = kRms ? rs * (gh - h[e] * sgh) : rs * (gh - sg - h[e] * sgh);
            if constexpr (kGres) d += to_acc(rv[k].v[e]);
            o.v[e] = from_acc<T>(d);
          }
          reinterpret_cast<V*>(dx + off)[q] = o;
        }
#pragma unroll
        for (int p = 0; p < kParts; ++p) {
          if (do_dw) {
            VA a = aw[p * nvec + q];
#pragma unroll
            for (int i = 0; i < kQ; ++i) a.v[i] += to_acc(gv[k].v[p * kQ + i]) * h[p * kQ + i];
            aw[p * nvec + q] = a;
          }
          if (do_db) {
            VA a = ab[p * nvec + q];
#pragma unroll
            for (int i = 0; i < kQ; ++i) a.v[i] += to_acc(gv[k].v[p * kQ + i]);
            ab[p * nvec + q] = a;
          }
        }
      }
    }
  }
  if (!do_dw && !do_db) return;
  __syncthreads();
  const A* acc = reinterpret_cast<const A*>(norm_smem);
  const int warp_floats = (int(do_dw) + int(do_db)) * c;
  for (int col = threadIdx.x; col < c; col += blockDim.x) {
    const int q = col / kV, e = col % kV;
    const int at = ((e / kQ) * nvec + q) * kQ + e % kQ;
    A tw = 0, tb = 0;
    for (int wp = 0; wp < kBwdWarps; ++wp) {
      if (do_dw) tw += acc[wp * warp_floats + at];
      if (do_db) tb += acc[wp * warp_floats + (do_dw ? c : 0) + at];
    }
    if (do_dw) pdw[static_cast<int64_t>(blockIdx.x) * c + col] = tw;
    if (do_db) pdb[static_cast<int64_t>(blockIdx.x) * c + col] = tb;
  }
}

// ---- warp group per row (the backward of wide rows) ----

constexpr int kGroupWarps = 4;  // warps per row (and per block)
constexpr int kGroupThreads = kGroupWarps * 32;
constexpr int kGroupMaxNV = 2;          // 16-byte vectors per thread at most
constexpr int kGroupMinWarpNV = 5;      // auto: rows that take >= 5 vectors a lane of one warp
constexpr int kGroupMaxChunks = 512;    // blocks (row chunks) at most
constexpr int kGroupMinChunkRows = 32;  // rows per chunk at least

// The backward of wide rows: one block of kGroupWarps warps per chunk of rows [blockIdx.x *
// rows_per_chunk, +rows_per_chunk), the whole block on one row at a time (thread t holds the
// vectors q = k * kGroupThreads + t, k < kNV, of the row), so a thread keeps only 2 kNV vectors
// of x and gy (3 kNV with gres) and its columns' dW / dB sums in registers: several blocks share
// an SM, and each thread loads row r + 1 while it works on row r. The row's two
// dot products are added over the warps through shared memory in warp order (one barrier a row:
// the sums of rows r and r + 1 go to different slots). dx as backward_dx_kernel, plus gres with
// kGres; pdw[chunk, col] = sum of gy * h and pdb[chunk, col] = sum of gy over the chunk's rows,
// each column's rows added in row order by the thread that owns it.
template <typename T, bool kRms, bool kGres, int kNV>
__global__ void __launch_bounds__(kGroupThreads)
    backward_group_kernel(const T* __restrict__ gy, const T* __restrict__ x,
                          const T* __restrict__ w, const acc_t<T>* __restrict__ mean,
                          const acc_t<T>* __restrict__ rstd, const T* __restrict__ gres,
                          T* __restrict__ dx, acc_t<T>* __restrict__ pdw,
                          acc_t<T>* __restrict__ pdb, int64_t rows, int c, int64_t rows_per_chunk) {
  using A = acc_t<T>;
  constexpr int kV = kVecElems<T>;
  using V = Vec<T, kV>;
  __shared__ A red[2][kGroupWarps][2];  // [row parity][warp][sum of gh, sum of gh * h]
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, nvec = c / kV;
  const bool do_dw = pdw != nullptr, do_db = pdb != nullptr;
  V wv[kNV];
  A aw[kNV][kV] = {}, ab[kNV][kV] = {};
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int q = k * kGroupThreads + t;
    if (q < nvec) wv[k] = reinterpret_cast<const V*>(w)[q];
  }
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  V xv[kNV], gv[kNV], rv[kNV];
  auto load = [&](int64_t r, V* xo, V* go, V* ro) {
    const int64_t off = r * c;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * kGroupThreads + t;
      if (q < nvec) {
        xo[k] = reinterpret_cast<const V*>(x + off)[q];
        go[k] = reinterpret_cast<const V*>(gy + off)[q];
        if constexpr (kGres) ro[k] = reinterpret_cast<const V*>(gres + off)[q];
      }
    }
  };
  if (r0 < r1) load(r0, xv, gv, rv);
  int parity = 0;
  for (int64_t r = r0; r < r1; ++r, parity ^= 1) {
    V xn[kNV], gn[kNV], rn[kNV];
    if (r + 1 < r1) load(r + 1, xn, gn, rn);
    const A m = kRms ? A(0) : mean[r], rs = rstd[r];
    A sg = 0, sgh = 0;
#pragma unroll
    for (int k = 0; k < kNV; ++k) launder(wv[k]);  // w stays packed (not hoisted as f32)
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      if (k * kGroupThreads + t < nvec) {
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          const A gh = to_acc(gv[k].v[e]) * to_acc(wv[k].v[e]);
          const A h = kRms ? to_acc(xv[k].v[e]) * rs : (to_acc(xv[k].v[e]) - m) * rs;
          if constexpr (!kRms) sg += gh;
          sgh += gh * h;
        }
      }
    }
    if constexpr (!kRms) sg = warp_sum(sg);
    sgh = warp_sum(sgh);
    if (lane == 0) {
      red[parity][warp][0] = sg;
      red[parity][warp][1] = sgh;
    }
    __syncthreads();
    sg = 0;
    sgh = 0;
#pragma unroll
    for (int i = 0; i < kGroupWarps; ++i) {
      if constexpr (!kRms) sg += red[parity][i][0];
      sgh += red[parity][i][1];
    }
    sg /= A(c);
    sgh /= A(c);
#pragma unroll
    for (int k = 0; k < kNV; ++k) {  // converted again below rather than kept as f32
      launder(xv[k]);
      launder(gv[k]);
      launder(wv[k]);
    }
    const int64_t off = r * c;
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      const int q = k * kGroupThreads + t;
      if (q < nvec) {
        V o;
#pragma unroll
        for (int e = 0; e < kV; ++e) {
          const A g = to_acc(gv[k].v[e]);
          const A h = kRms ? to_acc(xv[k].v[e]) * rs : (to_acc(xv[k].v[e]) - m) * rs;
          const A gh = g * to_acc(wv[k].v[e]);
          A d = kRms ? rs * (gh - h * sgh) : rs * (gh - sg - h * sgh);
          if constexpr (kGres) d += to_acc(rv[k].v[e]);
          o.v[e] = from_acc<T>(d);
          aw[k][e] += g * h;
          if constexpr (!kRms) ab[k][e] += g;
        }
        if (dx != nullptr) reinterpret_cast<V*>(dx + off)[q] = o;
      }
    }
#pragma unroll
    for (int k = 0; k < kNV; ++k) {
      xv[k] = xn[k];
      gv[k] = gn[k];
      launder(xv[k]);
      launder(gv[k]);
      if constexpr (kGres) {
        rv[k] = rn[k];
        launder(rv[k]);
      }
    }
  }
  const int64_t base = static_cast<int64_t>(blockIdx.x) * c;
#pragma unroll
  for (int k = 0; k < kNV; ++k) {
    const int q = k * kGroupThreads + t;
    if (q < nvec) {
#pragma unroll
      for (int e = 0; e < kV; ++e) {
        if (do_dw) pdw[base + q * kV + e] = aw[k][e];
        if (!kRms && do_db) pdb[base + q * kV + e] = ab[k][e];
      }
    }
  }
}

// Where a norm's weight (and bias) gradient goes: a new tensor in the weight's dtype (dw, db), or
// into an f32 .grad (dw_into, db_into: autograd's accumulation_target), added to it or, with
// *_over (a stale .grad), written over it. Null pointers: not wanted.
template <typename T>
struct ParamOut {
  T* dw = nullptr;
  T* db = nullptr;
  acc_t<T>* dw_into = nullptr;
  acc_t<T>* db_into = nullptr;
  bool dw_over = false, db_over = false;
  __host__ __device__ bool want_w() const { return dw != nullptr || dw_into != nullptr; }
  __host__ __device__ bool want_b() const { return db != nullptr || db_into != nullptr; }
};

// The sum over the chunks of pdw[chunk, col] into o's weight gradient; likewise pdb into the bias
// gradient (each where o wants it). Block (32, 32): 32 columns, 32 chunk lanes; grid ceil(C / 32).
// Lane y adds chunks y, y + 32, ... in order (loads issued kBatch at a time), then the 32 lanes are
// added in lane order.
template <typename T>
__global__ void __launch_bounds__(1024)
    dw_reduce_kernel(const acc_t<T>* __restrict__ pdw, const acc_t<T>* __restrict__ pdb,
                     ParamOut<T> o, int64_t chunks, int64_t c) {
  using A = acc_t<T>;
  constexpr int kBatch = 8;
  __shared__ A sw[32][33];
  __shared__ A sb[32][33];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  A aw = 0, ab = 0;
  if (col < c) {
    for (int64_t k0 = threadIdx.y; k0 < chunks; k0 += 32 * kBatch) {
      A vw[kBatch], vb[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int64_t k = k0 + 32 * j;
        vw[j] = o.want_w() && k < chunks ? pdw[k * c + col] : A(0);
        vb[j] = o.want_b() && k < chunks ? pdb[k * c + col] : A(0);
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        aw += vw[j];
        ab += vb[j];
      }
    }
  }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && col < c) {
    A tw = 0, tb = 0;
    for (int k = 0; k < 32; ++k) {
      tw += sw[k][threadIdx.x];
      tb += sb[k][threadIdx.x];
    }
    if (o.dw_into != nullptr) {
      o.dw_into[col] = (o.dw_over ? A(0) : o.dw_into[col]) + tw;
    } else if (o.dw != nullptr) {
      o.dw[col] = from_acc<T>(tw);
    }
    if (o.db_into != nullptr) {
      o.db_into[col] = (o.db_over ? A(0) : o.db_into[col]) + tb;
    } else if (o.db != nullptr) {
      o.db[col] = from_acc<T>(tb);
    }
  }
}

// ---- host launchers ----

struct ForwardOut {
  Tensor y;     // (..., C) in x's dtype
  Tensor sum;   // (..., C) x + residual, only with a residual
  Tensor mean;  // (...) compute dtype, layer norm only
  Tensor rstd;  // (...) compute dtype
};

inline DType acc_dtype(DType t) { return t == DType::kF64 ? DType::kF64 : DType::kF32; }

// KILN_NORM_KERNEL: unset, "" or "auto" -> the warp-per-row kernels wherever they apply, the
// backward of wide rows (kGroupMinWarpNV vectors a lane or more) by the warp-group kernel;
// "warp" -> the warp-per-row kernels for the backward of wide rows too; "group" -> the warp-group
// backward wherever a row fits it; "general" -> the block-per-row kernels for every shape (for
// comparisons). Read on every call so tests and benchmarks can switch it.
enum class NormKernel { kAuto, kGeneral, kWarp, kGroup };
inline NormKernel norm_kernel_choice(const char* op) {
  const char* e = std::getenv("KILN_NORM_KERNEL");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return NormKernel::kAuto;
  if (std::strcmp(e, "general") == 0) return NormKernel::kGeneral;
  if (std::strcmp(e, "warp") == 0) return NormKernel::kWarp;
  if (std::strcmp(e, "group") == 0) return NormKernel::kGroup;
  KILN_CHECK(false) << op << ": KILN_NORM_KERNEL must be auto, warp, group or general, got '" << e
                    << "'";
  return NormKernel::kAuto;
}
inline bool force_general(const char* op) { return norm_kernel_choice(op) == NormKernel::kGeneral; }

// Vectors per thread of the warp-group backward for rows of c elements of T whose warp-per-row
// kernels take nv vectors a lane (nv > 0), or 0 where the warp-per-row backward runs instead.
template <typename T>
int group_vecs(const char* op, int64_t c, int nv) {
  const NormKernel k = norm_kernel_choice(op);
  if (k == NormKernel::kWarp || (k == NormKernel::kAuto && nv < kGroupMinWarpNV)) return 0;
  const int64_t g = (c / kVecElems<T> + kGroupThreads - 1) / kGroupThreads;
  return g <= kGroupMaxNV ? static_cast<int>(g) : 0;
}

// 16-byte vectors per lane of the warp-per-row kernels for rows of c elements of T, or 0 where
// they do not apply: f64, c not a multiple of a vector, more than kWarpMaxVecs vectors per lane,
// a pointer in ptrs not 16-byte aligned (null entries are skipped), KILN_NORM_KERNEL=general.
template <typename T>
int warp_vecs(const char* op, int64_t c, std::initializer_list<const void*> ptrs) {
  if constexpr (std::is_same_v<T, double>) {
    return 0;
  } else {
    constexpr int kV = kVecElems<T>;
    if (c <= 0 || c % kV != 0 || c > int64_t{32} * kWarpMaxVecs * kV) return 0;
    if (vec_width<T>(ptrs) != kV || force_general(op)) return 0;
    return static_cast<int>((c / kV + 31) / 32);
  }
}

// Calls f(std::integral_constant<int, nv>{}) for nv in [1, kWarpMaxVecs].
template <typename F>
void with_vecs(int nv, F&& f) {
  static_assert(kWarpMaxVecs == 8, "with_vecs lists the cases 1..8");
  switch (nv) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    case 8:
      f(std::integral_constant<int, 8>{});
      break;
    default:
      KILN_CHECK(false) << "internal: norm: " << nv << " vectors per lane";
  }
}

// Resident blocks of `threads` threads per SM for kKernel (no dynamic shared memory); computed
// once per kernel.
template <auto kKernel>
int blocks_per_sm(int threads) {
  static const int n = [threads] {
    int b = 0;
    KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kKernel, threads, 0));
    return std::max(b, 1);
  }();
  return n;
}

// Lets kKernel use `bytes` of dynamic shared memory on the current device (above the default
// 48 KiB only after cudaFuncSetAttribute); the attribute is set once per device and kernel.
template <auto kKernel>
void allow_dynamic_smem(int bytes) {
  if (bytes <= 48 * 1024) return;
  static std::array<std::atomic<int>, 64> set{};
  const int d = current_device();
  if (d < 64 && set[d].load() >= bytes) return;
  KILN_CUDA_CHECK(
      cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  if (d < 64) set[d].store(bytes);
}

// forward_warp_kernel on a grid of resident blocks (no more blocks than rows need), a warp per row.
template <auto kKernel, typename... Args>
void launch_forward_warp(int64_t rows, Args... args) {
  const int threads = kFwdWarps * 32;
  const int64_t resident = int64_t{blocks_per_sm<kKernel>(threads)} * sm_count();
  const int64_t blocks = std::min((rows + kFwdWarps - 1) / kFwdWarps, resident);
  kKernel<<<static_cast<unsigned>(blocks), threads, 0, compute_stream()>>>(args...);
  KILN_CUDA_CHECK_LAUNCH();
}

// backward_warp_kernel, one block per chunk, with smem bytes of dynamic shared memory.
template <auto kKernel, typename T, int kNV, typename... Args>
void launch_backward_warp(int64_t chunks, int smem, Args... args) {
  // The most any C served by kNV asks for, so that the attribute is set once.
  allow_dynamic_smem<kKernel>(kBwdWarps * 2 * 32 * kNV * kVecElems<T> *
                              static_cast<int>(sizeof(acc_t<T>)));
  kKernel<<<static_cast<unsigned>(chunks), kBwdWarps * 32, smem, compute_stream()>>>(args...);
  KILN_CUDA_CHECK_LAUNCH();
}

// REQUIRES: x, res (or undefined), w, b (or undefined) contiguous, on the current device, one
// floating dtype; w and b have C = x.size(-1) elements.
template <bool kRms>
ForwardOut forward(const char* op, const Tensor& x, const Tensor& res, const Tensor& w,
                   const Tensor& b, double eps) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  ForwardOut o;
  o.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (res.defined()) o.sum = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (!kRms) o.mean = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  o.rstd = Tensor::empty(stat_shape, acc_dtype(x.dtype()), x.device());
  if (rows == 0) return o;
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, {
    using A = acc_t<T>;
    const T* bp = b.defined() ? b.data<T>() : nullptr;
    const T* rp = res.defined() ? res.data<T>() : nullptr;
    T* sp = res.defined() ? o.sum.data<T>() : nullptr;
    A* mp = kRms ? nullptr : o.mean.data<A>();
    const int nv = warp_vecs<T>(op, c, {x.data<T>(), rp, w.data<T>(), bp, o.y.data<T>(), sp});
    if constexpr (!std::is_same_v<T, double>) {
      if (nv > 0) {
        with_vecs(nv, [&](auto nvc) {
          constexpr int kNV = decltype(nvc)::value;
          if (rp != nullptr) {
            launch_forward_warp<forward_warp_kernel<T, kRms, true, kNV>>(
                rows, x.data<T>(), rp, w.data<T>(), bp, o.y.data<T>(), sp, mp, o.rstd.data<A>(),
                rows, static_cast<int>(c), static_cast<A>(eps));
          } else {
            launch_forward_warp<forward_warp_kernel<T, kRms, false, kNV>>(
                rows, x.data<T>(), rp, w.data<T>(), bp, o.y.data<T>(), sp, mp, o.rstd.data<A>(),
                rows, static_cast<int>(c), static_cast<A>(eps));
          }
        });
      }
    }
    if (nv == 0) {
      const int threads = row_threads(c);
      if (res.defined()) {
        forward_kernel<T, kRms, true><<<row_blocks(rows), threads, 0, compute_stream()>>>(
            x.data<T>(), rp, w.data<T>(), bp, o.y.data<T>(), sp, mp, o.rstd.data<A>(), rows, c,
            static_cast<A>(eps));
      } else {
        forward_kernel<T, kRms, false><<<row_blocks(rows), threads, 0, compute_stream()>>>(
            x.data<T>(), nullptr, w.data<T>(), bp, o.y.data<T>(), nullptr, mp, o.rstd.data<A>(),
            rows, c, static_cast<A>(eps));
      }
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
  return o;
}

struct Grads {
  Tensor dx, dw, db;  // undefined where not asked for
};

// Per-chunk partial sums of the parameter gradients po wants, over chunks of at least min_rows
// rows, at most max_chunks of them (a function of the shape only), and their reduction into po.
template <typename T>
struct Partials {
  int64_t rows_per_chunk = 0, chunks = 0;
  Tensor pdw, pdb;                       // (chunks, C) in the compute dtype, where wanted
  acc_t<T>*pw = nullptr, *pb = nullptr;  // their data, or null
  Partials(const ParamOut<T>& po, int64_t rows, int64_t c, int64_t min_rows, int64_t max_chunks,
           DType ad, Device dev)
      : rows_per_chunk(std::max<int64_t>(min_rows, (rows + max_chunks - 1) / max_chunks)),
        chunks((rows + rows_per_chunk - 1) / rows_per_chunk) {
    if (po.want_w()) pdw = Tensor::empty({chunks, c}, ad, dev), pw = pdw.data<acc_t<T>>();
    if (po.want_b()) pdb = Tensor::empty({chunks, c}, ad, dev), pb = pdb.data<acc_t<T>>();
  }
  // dw_reduce_kernel over the chunks into po (nothing when no gradient is wanted).
  void reduce_into(const ParamOut<T>& po, int64_t c) const {
    if (pw == nullptr && pb == nullptr) return;
    dw_reduce_kernel<T>
        <<<static_cast<unsigned>((c + 31) / 32), dim3(32, 32), 0, compute_stream()>>>(pw, pb, po,
                                                                                      chunks, c);
    KILN_CUDA_CHECK_LAUNCH();
  }
};

// The warp-per-row backward: dx (into dxp when not null), and the parameter gradients po wants
// through per-chunk partials. REQUIRES: warp_vecs<T>() gave nv > 0 for these tensors.
template <typename T, bool kRms>
void backward_warp(int nv, const T* gy, const T* x, const T* w, const acc_t<T>* mean,
                   const acc_t<T>* rstd, const T* gres, T* dxp, const ParamOut<T>& po, int64_t rows,
                   int64_t c, DType ad, Device dev) {
  using A = acc_t<T>;
  const Partials<T> part(po, rows, c, kBwdMinChunkRows, kBwdMaxChunks, ad, dev);
  A *pw = part.pw, *pb = part.pb;
  const int64_t chunks = part.chunks, rows_per_chunk = part.rows_per_chunk;
  const int smem = kBwdWarps * static_cast<int>(c) * static_cast<int>(sizeof(A)) *
                   (int(pw != nullptr) + int(pb != nullptr));
  with_vecs(nv, [&](auto nvc) {
    constexpr int kNV = decltype(nvc)::value;
    if (gres != nullptr) {
      launch_backward_warp<backward_warp_kernel<T, kRms, true, kNV>, T, kNV>(
          chunks, smem, gy, x, w, mean, rstd, gres, dxp, pw, pb, rows, static_cast<int>(c),
          rows_per_chunk);
    } else {
      launch_backward_warp<backward_warp_kernel<T, kRms, false, kNV>, T, kNV>(
          chunks, smem, gy, x, w, mean, rstd, gres, dxp, pw, pb, rows, static_cast<int>(c),
          rows_per_chunk);
    }
  });
  part.reduce_into(po, c);
}

// The warp-group backward (gv vectors per thread), then dw_reduce_kernel over its chunks.
// REQUIRES: group_vecs<T>() gave gv > 0 and warp_vecs<T>() > 0 for these tensors.
template <typename T, bool kRms>
void backward_group(int gv, const T* gy, const T* x, const T* w, const acc_t<T>* mean,
                    const acc_t<T>* rstd, const T* gres, T* dxp, const ParamOut<T>& po,
                    int64_t rows, int64_t c, DType ad, Device dev) {
  const Partials<T> part(po, rows, c, kGroupMinChunkRows, kGroupMaxChunks, ad, dev);
  auto run = [&](auto nvc, auto gresc) {
    constexpr int kNV = decltype(nvc)::value;
    constexpr bool kG = decltype(gresc)::value;
    backward_group_kernel<T, kRms, kG, kNV>
        <<<static_cast<unsigned>(part.chunks), kGroupThreads, 0, compute_stream()>>>(
            gy, x, w, mean, rstd, gres, dxp, part.pw, part.pb, rows, static_cast<int>(c),
            part.rows_per_chunk);
    KILN_CUDA_CHECK_LAUNCH();
  };
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  using Yes = std::true_type;
  using No = std::false_type;
  static_assert(kGroupMaxNV == 2, "backward_group lists the cases 1..2");
  auto by_gres = [&](auto nvc) {
    if (gres != nullptr) {
      run(nvc, Yes{});
    } else {
      run(nvc, No{});
    }
  };
  if (gv == 1) {
    by_gres(One{});
  } else {
    KILN_CHECK(gv == 2) << "internal: norm: " << gv << " vectors per thread";
    by_gres(Two{});
  }
  part.reduce_into(po, c);
}

// The f32 .grads a norm's parameter gradients go into (autograd's accumulation_target; undefined:
// a new tensor in the weight's dtype, as asked), each written over when its *_over is set.
struct ParamTargets {
  Tensor dw_into, db_into;  // (C) f32, contiguous, or undefined
  bool dw_over = false, db_over = false;
};

// Gradients of y = norm(x) given gy, plus gres added into dx when defined. x is what was
// normalised (the stored sum for the residual variants). A parameter gradient with a target in
// `into` goes into it (and stays undefined in the result); want_dw / want_db ask for the others.
// REQUIRES: gy, x, w, gres contiguous on the current device in one dtype; mean (layer norm) and
// rstd as the forward returned them; targets only for a 16-bit or f32 x.
template <bool kRms>
Grads backward(const char* op, const Tensor& gy, const Tensor& x, const Tensor& w,
               const Tensor& mean, const Tensor& rstd, const Tensor& gres, bool want_dx,
               bool want_dw, bool want_db, const ParamTargets& into = ParamTargets()) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  const bool iw = into.dw_into.defined(), ib = into.db_into.defined();
  for (const Tensor* t : {&into.dw_into, &into.db_into})
    KILN_CHECK(!t->defined() || (t->dtype() == DType::kF32 && t->is_contiguous() &&
                                 t->numel() == c && x.dtype() != DType::kF64))
        << op << ": internal: parameter gradient target " << t->str() << " for " << x.str();
  Grads g;
  if (want_dx) g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (want_dw && !iw) g.dw = Tensor::empty({c}, w.dtype(), w.device());
  if (want_db && !ib) g.db = Tensor::empty({c}, w.dtype(), w.device());
  if (c == 0) return g;
  if (rows == 0) {  // nothing to sum: zero weight gradients (a target written over: zeroed)
    if (g.dw.defined()) g.dw.zero_();
    if (g.db.defined()) g.db.zero_();
    if (iw && into.dw_over) Tensor(into.dw_into).zero_();
    if (ib && into.db_over) Tensor(into.db_into).zero_();
    return g;
  }
  const bool cw = g.dw.defined() || iw, cb = g.db.defined() || ib;  // computed
  if (!want_dx && !cw && !cb) return g;
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, {
    using A = acc_t<T>;
    const A* mp = kRms ? nullptr : mean.data<A>();
    const T* gp = gres.defined() ? gres.data<T>() : nullptr;
    T* dxp = want_dx ? g.dx.data<T>() : nullptr;
    ParamOut<T> po;
    po.dw = g.dw.defined() ? g.dw.data<T>() : nullptr;
    po.db = g.db.defined() ? g.db.data<T>() : nullptr;
    po.dw_into = iw ? static_cast<A*>(into.dw_into.raw()) : nullptr;
    po.db_into = ib ? static_cast<A*>(into.db_into.raw()) : nullptr;
    po.dw_over = into.dw_over;
    po.db_over = into.db_over;
    const int nv = warp_vecs<T>(op, c, {gy.data<T>(), x.data<T>(), w.data<T>(), gp, dxp});
    if constexpr (!std::is_same_v<T, double>) {
      if (nv > 0) {
        if (const int gv = group_vecs<T>(op, c, nv); gv > 0) {
          backward_group<T, kRms>(gv, gy.data<T>(), x.data<T>(), w.data<T>(), mp, rstd.data<A>(),
                                  gp, dxp, po, rows, c, acc_dtype(x.dtype()), x.device());
        } else {
          backward_warp<T, kRms>(nv, gy.data<T>(), x.data<T>(), w.data<T>(), mp, rstd.data<A>(), gp,
                                 dxp, po, rows, c, acc_dtype(x.dtype()), x.device());
        }
        break;  // out of the dtype switch
      }
    }
    if (want_dx) {
      backward_dx_kernel<T, kRms><<<row_blocks(rows), row_threads(c), 0, compute_stream()>>>(
          gy.data<T>(), x.data<T>(), w.data<T>(), mp, rstd.data<A>(), gp, dxp, rows, c);
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (cw || cb) {
      // At most 512 chunks of at least 64 rows: a function of the shape only.
      const int64_t rows_per_chunk = std::max<int64_t>(64, (rows + 511) / 512);
      const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
      const int64_t col_tiles = (c + kTileCols - 1) / kTileCols;
      KILN_CHECK(col_tiles <= 0x7fffffff && chunks <= 65535)
          << op << ": too many columns for the dW kernel (" << c << ")";
      const DType ad = acc_dtype(x.dtype());
      Tensor pdw = Tensor::empty({chunks, c}, ad, x.device());
      Tensor pdb = cb ? Tensor::empty({chunks, c}, ad, x.device()) : Tensor();
      backward_dw_partial_kernel<T, kRms>
          <<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(chunks)),
             dim3(kTileCols, kTileRows), 0, compute_stream()>>>(
              gy.data<T>(), x.data<T>(), mp, rstd.data<A>(), pdw.data<A>(),
              cb ? pdb.data<A>() : nullptr, rows, c, rows_per_chunk);
      KILN_CUDA_CHECK_LAUNCH();
      dw_reduce_kernel<T><<<static_cast<unsigned>(col_tiles), dim3(32, 32), 0, compute_stream()>>>(
          pdw.data<A>(), cb ? pdb.data<A>() : nullptr, po, chunks, c);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
  return g;
}

}  // namespace norm
}  // namespace kiln::cuda
