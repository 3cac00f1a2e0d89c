// CUDA kernels and host launchers shared by layer_norm and rms_norm (core/ops/layernorm.cu,
// core/ops/rmsnorm.cu), with and without the fused residual add in front:
//   forward   one block per row: [s = x + residual, stored], statistics in the compute type (two
//             passes for layer norm: mean, then the centred variance), y = h * w (+ b);
//   backward  one block per row for dx (+ the gradient reaching the residual stream), then dW / db
//             without atomics: (32 x 8)-thread blocks sum a tile of 32 columns over a fixed chunk
//             of rows into per-chunk partials, and one thread per column adds the partials in
//             chunk order. The result depends only on the shapes, never on scheduling.
// Include only from .cu files.
#pragma once

#include <algorithm>

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

// dw[col] = sum over chunks (in order) of pdw[chunk, col]; likewise db. One thread per column.
template <typename T>
__global__ void backward_dw_final_kernel(const acc_t<T>* __restrict__ pdw,
                                         const acc_t<T>* __restrict__ pdb, T* __restrict__ dw,
                                         T* __restrict__ db, int64_t chunks, int64_t c) {
  using A = acc_t<T>;
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; col < c;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (dw != nullptr) {
      A s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += pdw[k * c + col];
      dw[col] = from_acc<T>(s);
    }
    if (db != nullptr) {
      A s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += pdb[k * c + col];
      db[col] = from_acc<T>(s);
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
  const int threads = row_threads(c);
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, {
    using A = acc_t<T>;
    const T* bp = b.defined() ? b.data<T>() : nullptr;
    A* mp = kRms ? nullptr : o.mean.data<A>();
    if (res.defined()) {
      forward_kernel<T, kRms, true><<<row_blocks(rows), threads, 0, compute_stream()>>>(
          x.data<T>(), res.data<T>(), w.data<T>(), bp, o.y.data<T>(), o.sum.data<T>(), mp,
          o.rstd.data<A>(), rows, c, static_cast<A>(eps));
    } else {
      forward_kernel<T, kRms, false><<<row_blocks(rows), threads, 0, compute_stream()>>>(
          x.data<T>(), nullptr, w.data<T>(), bp, o.y.data<T>(), nullptr, mp, o.rstd.data<A>(), rows,
          c, static_cast<A>(eps));
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return o;
}

struct Grads {
  Tensor dx, dw, db;  // undefined where not asked for
};

// Gradients of y = norm(x) given gy, plus gres added into dx when defined. x is what was
// normalised (the stored sum for the residual variants). REQUIRES: gy, x, w, gres contiguous on
// the current device in one dtype; mean (layer norm) and rstd as the forward returned them.
template <bool kRms>
Grads backward(const char* op, const Tensor& gy, const Tensor& x, const Tensor& w,
               const Tensor& mean, const Tensor& rstd, const Tensor& gres, bool want_dx,
               bool want_dw, bool want_db) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  Grads g;
  if (want_dx) g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (want_dw) g.dw = Tensor::empty({c}, w.dtype(), w.device());
  if (want_db) g.db = Tensor::empty({c}, w.dtype(), w.device());
  if (c == 0) return g;
  if (rows == 0) {  // nothing to sum: zero weight gradients
    if (want_dw) g.dw.zero_();
    if (want_db) g.db.zero_();
    return g;
  }
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), op, T, {
    using A = acc_t<T>;
    const A* mp = kRms ? nullptr : mean.data<A>();
    if (want_dx) {
      backward_dx_kernel<T, kRms><<<row_blocks(rows), row_threads(c), 0, compute_stream()>>>(
          gy.data<T>(), x.data<T>(), w.data<T>(), mp, rstd.data<A>(),
          gres.defined() ? gres.data<T>() : nullptr, g.dx.data<T>(), rows, c);
      KILN_CUDA_CHECK_LAUNCH();
    }
    if (want_dw || want_db) {
      // At most 512 chunks of at least 64 rows: a function of the shape only.
      const int64_t rows_per_chunk = std::max<int64_t>(64, (rows + 511) / 512);
      const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
      const int64_t col_tiles = (c + kTileCols - 1) / kTileCols;
      KILN_CHECK(col_tiles <= 0x7fffffff && chunks <= 65535)
          << op << ": too many columns for the dW kernel (" << c << ")";
      const DType ad = acc_dtype(x.dtype());
      Tensor pdw = Tensor::empty({chunks, c}, ad, x.device());
      Tensor pdb = want_db ? Tensor::empty({chunks, c}, ad, x.device()) : Tensor();
      backward_dw_partial_kernel<T, kRms>
          <<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(chunks)),
             dim3(kTileCols, kTileRows), 0, compute_stream()>>>(
              gy.data<T>(), x.data<T>(), mp, rstd.data<A>(), pdw.data<A>(),
              want_db ? pdb.data<A>() : nullptr, rows, c, rows_per_chunk);
      KILN_CUDA_CHECK_LAUNCH();
      backward_dw_final_kernel<T><<<blocks_for(c), 256, 0, compute_stream()>>>(
          pdw.data<A>(), want_db ? pdb.data<A>() : nullptr, want_dw ? g.dw.data<T>() : nullptr,
          want_db ? g.db.data<T>() : nullptr, chunks, c);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
  return g;
}

}  // namespace norm
}  // namespace kiln::cuda
