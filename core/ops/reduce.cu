// CUDA reductions: sums (optionally of squares) over any set of dims of a strided tensor, in a
// fixed order so repeated runs are bit-identical: each output is summed by one block (reduced
// elements adjacent in memory) or one column of a 32x8 block (outputs adjacent), in f64, over
// chunks whose layout depends on the shape alone; chunk partials are added in chunk order by a
// second pass. Also the broadcast-back kernel of their backward.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "core/cuda/dtype.cuh"
#include "core/cuda/runtime.h"
#include "core/cuda/strided.cuh"
#include "core/env_switch.h"
#include "core/ops/cuda_base_ops.h"

namespace kiln::cuda {
namespace {

constexpr int kInnerThreads = 256;
constexpr int kOuterX = 32, kOuterY = 8;

// A list of coalesced dims (outermost first) mapping an index to an element offset.
struct DimList {
  int n = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};

  __device__ __forceinline__ int64_t offset(int64_t i) const {
    if (n == 0) return 0;
    if (n == 1) return i * stride[0];
    int64_t off = 0;
    for (int d = n - 1; d >= 0; --d) {
      off += (i % size[d]) * stride[d];
      i /= size[d];
    }
    return off;
  }
};

struct ReduceGeom {
  DimList kept, red;
  int64_t m = 1, r = 1;  // number of outputs, elements reduced into each
  int64_t chunk = 1;     // reduced elements per chunk
  int64_t chunks = 1;    // chunks per output (1: write the output directly)
};

// Appends (size, stride) dims, outermost first, dropping size-1 dims and merging a dim into the
// previous one when they are contiguous with each other.
DimList make_dims(const std::vector<std::pair<int64_t, int64_t>>& dims) {
  DimList l;
  for (const auto& [sz, st] : dims) {
    if (sz == 1) continue;
    if (l.n > 0 && l.stride[l.n - 1] == st * sz) {
      l.size[l.n - 1] *= sz;
      l.stride[l.n - 1] = st;
      continue;
    }
    KILN_CHECK(l.n < kMaxDims) << "CUDA reduction: more than " << kMaxDims << " separate dims";
    l.size[l.n] = sz;
    l.stride[l.n] = st;
    ++l.n;
  }
  return l;
}

// Fixed-order block sum of v; the result is valid in thread 0.
template <int kThreads>
__device__ __forceinline__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if ((tid & 31) == 0) warp_sums[tid >> 5] = v;
  __syncthreads();
  double total = 0;
  if (tid == 0) {
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  }
  return total;
}

template <typename S, bool kSquare>
__device__ __forceinline__ double load_term(const S* x, int64_t off) {
  const double v = static_cast<double>(Elem<S>::load(x, off));
  return kSquare ? v * v : v;
}

// One block per (output, chunk); the threads stride over the chunk's reduced elements.
template <typename S, bool kSquare>
__global__ void __launch_bounds__(kInnerThreads)
    reduce_inner_kernel(const S* __restrict__ x, ReduceGeom g, double* __restrict__ partial,
                        void* out, DType out_dtype, double div) {
  const int64_t m = blockIdx.x, c = blockIdx.y;
  const int64_t base = g.kept.offset(m);
  const int64_t r0 = c * g.chunk, r1 = min(g.r, r0 + g.chunk);
  double acc = 0;
  for (int64_t r = r0 + threadIdx.x; r < r1; r += kInnerThreads)
    acc += load_term<S, kSquare>(x, base + g.red.offset(r));
  const double total = block_sum<kInnerThreads>(acc);
  if (threadIdx.x == 0) {
    if (g.chunks == 1) {
      store_from_double(out, out_dtype, m, total / div);
    } else {
      partial[m * g.chunks + c] = total;
    }
  }
}

// A 32x8 block covers 32 adjacent outputs; its 8 rows stride over the chunk's reduced elements.
template <typename S, bool kSquare>
__global__ void __launch_bounds__(kOuterX* kOuterY)
    reduce_outer_kernel(const S* __restrict__ x, ReduceGeom g, double* __restrict__ partial,
                        void* out, DType out_dtype, double div) {
  __shared__ double sm[kOuterY][kOuterX + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kOuterX + tx, c = blockIdx.y;
  double acc = 0;
  if (m < g.m) {
    const int64_t base = g.kept.offset(m);
    const int64_t r0 = c * g.chunk, r1 = min(g.r, r0 + g.chunk);
    for (int64_t r = r0 + ty; r < r1; r += kOuterY)
      acc += load_term<S, kSquare>(x, base + g.red.offset(r));
  }
  sm[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && m < g.m) {
    double total = 0;
    for (int k = 0; k < kOuterY; ++k) total += sm[k][tx];
    if (g.chunks == 1) {
      store_from_double(out, out_dtype, m, total / div);
    } else {
      partial[m * g.chunks + c] = total;
    }
  }
}

// Splits r into chunks: enough blocks to fill the GPU, as a function of the shape only.
void plan_chunks(ReduceGeom* g, int64_t blocks_per_chunk, int64_t min_chunk) {
  int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(1024 / std::max<int64_t>(blocks_per_chunk, 1), g->r / min_chunk));
  chunks = std::min<int64_t>(chunks, 1024);
  g->chunk = (g->r + chunks - 1) / chunks;
  g->chunks = (g->r + g->chunk - 1) / g->chunk;
}

template <typename S, bool kSquare>
void launch_pass(const S* x, const ReduceGeom& g, bool inner, double* partial, void* out,
                 DType out_dtype, double div) {
  cudaStream_t s = compute_stream();
  if (inner) {
    dim3 grid(static_cast<unsigned>(g.m), static_cast<unsigned>(g.chunks));
    reduce_inner_kernel<S, kSquare>
        <<<grid, kInnerThreads, 0, s>>>(x, g, partial, out, out_dtype, div);
  } else {
    dim3 grid(static_cast<unsigned>((g.m + kOuterX - 1) / kOuterX),
              static_cast<unsigned>(g.chunks));
    reduce_outer_kernel<S, kSquare>
        <<<grid, dim3(kOuterX, kOuterY), 0, s>>>(x, g, partial, out, out_dtype, div);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

// ---- column sums of a contiguous (rows, m) matrix (bias gradients) ----

constexpr int kColX = 32, kColY = 8;   // 32 lanes of 16-byte column vectors x 8 row lanes
constexpr int kColUnroll = 4;          // row loads in flight per thread
constexpr int kColTargetBlocks = 528;  // 4 blocks of 8 warps per SM on 132 SMs

// Out[col] := v, or (accumulate: out is f32) out[col] += v.
__device__ __forceinline__ void put_col(void* out, DType out_dtype, int64_t col, double v,
                                        bool accumulate) {
  if (accumulate) {
    float* o = static_cast<float*>(out);
    o[col] = static_cast<float>(static_cast<double>(o[col]) + v);
  } else {
    store_from_double(out, out_dtype, col, v);
  }
}

// Block (kColX, kColY) over kColX vectors of kV columns (16 bytes of S) and chunk blockIdx.y of
// the rows: row lane y adds rows r0 + y, r0 + y + kColY, ... (kColUnroll rows loaded at a time)
// into f64 accumulators, then the kColY lanes are added in lane order into partial[chunk, col], or
// into out (/ div; added to it with accumulate) when there is one chunk.
template <typename S>
__global__ void __launch_bounds__(kColX* kColY)
    colsum_kernel(const S* __restrict__ x, int64_t rows, int64_t m, int64_t chunk,
                  double* __restrict__ partial, void* out, DType out_dtype, double div,
                  bool accumulate) {
  constexpr int kV = static_cast<int>(16 / sizeof(S));
  __shared__ double sm[kColY][kColX * kV + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kColX + tx;  // this thread's vector
  const int64_t nvec = m / kV;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk, r1 = min(rows, r0 + chunk);
  double acc[kV] = {};
  if (q < nvec) {
    const uint4* xv = reinterpret_cast<const uint4*>(x) + q;
    for (int64_t r = r0 + ty; r < r1; r += kColY * kColUnroll) {
      uint4 u[kColUnroll];
#pragma unroll
      for (int k = 0; k < kColUnroll; ++k) {
        const int64_t rr = r + k * kColY;
        if (rr < r1) u[k] = xv[rr * nvec];
      }
#pragma unroll
      for (int k = 0; k < kColUnroll; ++k) {
        if (r + k * kColY < r1) {
          const S* e = reinterpret_cast<const S*>(&u[k]);
#pragma unroll
          for (int i = 0; i < kV; ++i) acc[i] += static_cast<double>(Elem<S>::load(e, i));
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kV; ++i) sm[ty][tx * kV + i] = acc[i];
  __syncthreads();
  // Thread (tx, ty) finishes columns tx + kColX * j of the block's kColX * kV.
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kColX * kV;
  for (int j = ty; j < kV; j += kColY) {
    const int lc = tx + kColX * j;
    const int64_t col = col0 + lc;
    if (col >= m) continue;
    double total = 0;
    for (int k = 0; k < kColY; ++k) total += sm[k][lc];
    if (partial == nullptr) {
      put_col(out, out_dtype, col, total / div, accumulate);
    } else {
      partial[blockIdx.y * m + col] = total;
    }
  }
}

// out[col] = sum of partial[chunk, col] over the chunks, in chunk order, / div (added to out[col]
// with accumulate).
__global__ void colsum_partials_kernel(const double* __restrict__ partial, int64_t chunks,
                                       int64_t m, void* out, DType out_dtype, double div,
                                       bool accumulate) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= m) return;
  double total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c * m + col];
  put_col(out, out_dtype, col, total / div, accumulate);
}

// KILN_COLSUM_VEC=0: column sums through the general outer reduction.
EnvSwitch g_colsum_vec("KILN_COLSUM_VEC", /*default_on=*/true);

// Sums x (rows, m) over its rows into out (m) / div (with accumulate, out f32: added to out), where
// x is a contiguous 16-bit or f32 matrix, m a multiple of a 16-byte vector and x 16-byte aligned;
// false (nothing ran) otherwise. The chunking depends on the shape only.
bool try_colsum(const Tensor& x, int64_t rows, int64_t m, const Tensor& out, double div,
                bool accumulate = false) {
  const DType t = x.dtype();
  if (!g_colsum_vec.on() || rows <= 0 || m <= 0) return false;
  if (t != DType::kBF16 && t != DType::kF16 && t != DType::kF32) return false;
  const int64_t kv = 16 / static_cast<int64_t>(dtype_size(t));
  if (m % kv != 0 || reinterpret_cast<uintptr_t>(x.raw()) % 16 != 0) return false;
  const int64_t tiles = (m / kv + kColX - 1) / kColX;
  if (tiles > 0x7fffffff) return false;
  const int64_t want = std::max<int64_t>(1, kColTargetBlocks / tiles);
  const int64_t chunks0 = std::min<int64_t>({want, (rows + 127) / 128, 65535});
  const int64_t chunk = (rows + chunks0 - 1) / chunks0;
  const int64_t chunks = (rows + chunk - 1) / chunk;
  Tensor partial;
  if (chunks > 1) partial = Tensor::empty({chunks * m}, DType::kF64, x.device());
  double* pp = partial.defined() ? partial.data<double>() : nullptr;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
  KILN_CUDA_DISPATCH_STORAGE(t, S, {
    if constexpr (!std::is_same_v<S, double>) {
      colsum_kernel<S><<<grid, dim3(kColX, kColY), 0, compute_stream()>>>(
          static_cast<const S*>(x.raw()), rows, m, chunk, pp, out.raw(), out.dtype(), div,
          accumulate);
      KILN_CUDA_CHECK_LAUNCH();
    }
  });
  if (chunks > 1) {
    colsum_partials_kernel<<<static_cast<unsigned>((m + 255) / 256), 256, 0, compute_stream()>>>(
        pp, chunks, m, out.raw(), out.dtype(), div, accumulate);
    KILN_CUDA_CHECK_LAUNCH();
  }
  return true;
}

template <typename S, typename I>
__global__ void expand_kernel(const S* __restrict__ g, S* __restrict__ out, StridedIter<2> it, I n,
                              double div) {
  using C = typename Elem<S>::C;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<I>(gridDim.x) * blockDim.x) {
    I off[2];
    it.offsets(i, off);
    const double v = static_cast<double>(Elem<S>::load(g, off[1])) / div;
    Elem<S>::store(out, off[0], static_cast<C>(v));
  }
}

}  // namespace

void reduce_sum(const Tensor& x, const std::vector<bool>& reduce, const Tensor& out, double div,
                bool square) {
  KILN_CHECK(static_cast<int64_t>(reduce.size()) == x.dim())
      << "internal: reduce mask of " << reduce.size() << " for " << x.str();
  KILN_CHECK(out.is_contiguous() && out.device() == x.device())
      << "internal: reduce output " << out.str() << " for " << x.str();
  DeviceGuard guard(device_of(x));
  const DType t = x.dtype();
  if (t != DType::kF32 && t != DType::kF64 && t != DType::kBF16 && t != DType::kF16)
    return reduce_sum(raw::convert(x, DType::kF64), reduce, out, div, square);  // fp8, integers
  std::vector<std::pair<int64_t, int64_t>> kept, red;
  int64_t min_stride = -1;
  bool min_is_reduced = false;
  for (int64_t d = 0; d < x.dim(); ++d) {
    const int64_t sz = x.size(d), st = x.strides()[d];
    (reduce[d] ? red : kept).emplace_back(sz, st);
    if (sz > 1 && (min_stride < 0 || std::abs(st) < min_stride)) {
      min_stride = std::abs(st);
      min_is_reduced = reduce[d];
    }
  }
  ReduceGeom g;
  g.kept = make_dims(kept);
  g.red = make_dims(red);
  g.m = 1;
  for (const auto& [sz, st] : kept) g.m *= sz;
  g.r = 1;
  for (const auto& [sz, st] : red) g.r *= sz;
  KILN_CHECK(out.numel() == g.m) << "internal: reduce output " << out.str() << " for " << g.m
                                 << " outputs of " << x.str();
  if (g.m == 0) return;
  if (g.r == 0) {  // an empty sum is 0 (a mean of nothing is 0/0 = NaN, as on the CPU)
    raw::fill(out, 0.0 / div);
    return;
  }
  const bool inner = min_is_reduced;
  // A contiguous (rows, m) matrix summed over its rows (a bias gradient): the 16-byte column
  // kernel.
  if (!inner && !square && g.kept.n == 1 && g.kept.stride[0] == 1 && g.red.n == 1 &&
      g.red.stride[0] == g.m && try_colsum(x, g.r, g.m, out, div))
    return;
  if (inner) {
    plan_chunks(&g, g.m, 4096);
  } else {
    plan_chunks(&g, (g.m + kOuterX - 1) / kOuterX, 128);
  }
  Tensor partial;
  if (g.chunks > 1) partial = Tensor::empty({g.m * g.chunks}, DType::kF64, x.device());
  double* pp = partial.defined() ? partial.data<double>() : nullptr;
  KILN_CUDA_DISPATCH_STORAGE(x.dtype(), S, {
    if (square) {
      launch_pass<S, true>(static_cast<const S*>(x.raw()), g, inner, pp, out.raw(), out.dtype(),
                           div);
    } else {
      launch_pass<S, false>(static_cast<const S*>(x.raw()), g, inner, pp, out.raw(), out.dtype(),
                            div);
    }
  });
  if (g.chunks == 1) return;
  // Second pass: each output's chunk partials, added in chunk order by one block.
  ReduceGeom g2;
  g2.kept = make_dims({{g.m, g.chunks}});
  g2.red = make_dims({{g.chunks, 1}});
  g2.m = g.m;
  g2.r = g.chunks;
  g2.chunk = g.chunks;
  g2.chunks = 1;
  launch_pass<double, false>(pp, g2, true, nullptr, out.raw(), out.dtype(), div);
}

void column_sums_into(const Tensor& x2, const Tensor& into, bool overwrite) {
  KILN_CHECK(x2.dim() == 2 && into.dtype() == DType::kF32 && into.is_contiguous() &&
             into.numel() == x2.size(1) && into.device() == x2.device())
      << "internal: column_sums_into " << x2.str() << " -> " << into.str();
  DeviceGuard guard(device_of(x2));
  const int64_t rows = x2.size(0), m = x2.size(1);
  if (m == 0) return;
  if (rows == 0) {
    if (overwrite) raw::fill(into, 0.0);
    return;
  }
  if (x2.is_contiguous() && try_colsum(x2, rows, m, into, 1.0, !overwrite)) return;
  if (overwrite) {  // the general reduction, written over the target
    reduce_sum(x2, {true, false}, into, 1.0, false);
    return;
  }
  Tensor sums = Tensor::empty({m}, DType::kF32, x2.device());
  reduce_sum(x2, {true, false}, sums, 1.0, false);
  add_inplace(into, sums, 1.0);
}

Tensor reduce_expand(const Tensor& g, const Shape& in_shape, std::optional<int64_t> dim,
                     double div) {
  DeviceGuard guard(device_of(g));
  Tensor gc = raw::contiguous(g);
  Tensor out = Tensor::empty(in_shape, g.dtype(), g.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  // g's strides seen at in_shape: 0 along the reduced dim (or everywhere for a full reduction).
  Shape gs(in_shape.size(), 0);
  if (dim) {
    Shape keep = in_shape;
    keep[*dim] = 1;
    gs = contiguous_strides(keep);
    gs[*dim] = 0;
  }
  StridedIter<2> it = make_strided_iter<2>(in_shape, {out.strides(), gs});
  KILN_CUDA_DISPATCH_STORAGE(g.dtype(), S, {
    const S* pg = static_cast<const S*>(gc.raw());
    S* po = static_cast<S*>(out.raw());
    if (fits_int32(it, n)) {
      expand_kernel<S, uint32_t>
          <<<blocks_for(n), 256, 0, compute_stream()>>>(pg, po, it, static_cast<uint32_t>(n), div);
    } else {
      expand_kernel<S, int64_t><<<blocks_for(n), 256, 0, compute_stream()>>>(pg, po, it, n, div);
    }
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

}  // namespace kiln::cuda
