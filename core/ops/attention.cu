// The kiln causal attention kernel: the CUDA path where cuDNN cannot serve (f32, shapes or
// machines cuDNN rejects, KILN_ATTENTION=kiln). Flash-attention style and plain SIMT, written to
// be obviously right rather than fast: tiles of 32 query rows x 32 keys in shared memory (f32,
// rows padded by four words so 16-byte loads stay aligned and free of bank conflicts), an online
// softmax per row in f32, outputs accumulated in f32 registers.
//
// Work split (256 threads = 8 warps per block):
// - forward: a block owns 32 query rows of one (batch, head); warp w owns rows w, w+8, w+16,
//   w+24. For each key tile up to the diagonal, lane j scores key j for the warp's rows, the
//   row max and sum come from warp shuffles, the probabilities go through a per-row shared
//   buffer (read back four at a time) and lane j accumulates output columns j, j+32, ...
// - backward, three launches, no atomics (deterministic for any launch order):
//   delta = rowsum(dO * O); dK/dV: a block owns 32 keys of one (batch, kv head) and walks every
//   query head of its group and every query tile at or after the keys, in a fixed order; dQ: a
//   block owns 32 query rows and walks the key tiles up to the diagonal.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "core/check.h"
#include "core/cuda/runtime.h"
#include "core/ops/attention_cuda.h"

namespace kiln::attention_cuda {
namespace {

constexpr int kTile = 32;      // query rows and keys per tile
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = kTile / kWarps;  // 4
constexpr int kPLd = kTile + 4;               // row stride of the 32 x 32 score buffers
constexpr unsigned kFull = 0xffffffffu;

// Row stride (floats) of a [kTile][kMaxD] tile: 16-byte aligned rows, and rows 4 banks apart so
// 8 lanes reading 16 bytes from 8 different rows hit all 32 banks once.
template <int kMaxD>
__host__ __device__ constexpr int row_stride() {
  return kMaxD + 4;
}

__device__ __forceinline__ float4 ld4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float dot4(float4 a, float4 b, float acc) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}
__device__ __forceinline__ float get(float4 v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

// Element strides of a (B, H, T, D) tensor for batch, head and position; D has unit stride.
struct Bht {
  int64_t b, h, t;
};

struct Params {
  const void *q, *k, *v, *o, *dout;  // inputs
  const float* lse;                  // (B, Hq, T), from the forward
  const float* delta;                // (B, Hq, T), backward only
  void *out, *dq, *dk, *dv;          // contiguous outputs
  float* lse_out;                    // forward output
  float* delta_out;                  // delta kernel output
  Bht qs, ks, vs, os, dos;
  int b, hq, hkv, t, d;
  float scale;
};

// Rows [r0, r0 + kTile) of a (T, D) matrix with row stride ts into a [kTile][row_stride] f32
// tile, zero outside T x D.
template <typename T, int kMaxD>
__device__ void load_tile(float* dst, const T* src, int64_t ts, int r0, int t, int d) {
  for (int idx = threadIdx.x; idx < kTile * kMaxD; idx += kThreads) {
    const int r = idx / kMaxD, c = idx % kMaxD;
    float x = 0.f;
    if (r0 + r < t && c < d) x = to_f32(src[(r0 + r) * ts + c]);
    dst[r * row_stride<kMaxD>() + c] = x;
  }
}

// For the warp's rows i_r = warp + r * kWarps of tile a (and b), lane j's dot products with row j
// of tile x (and y): sa[r] = a[i_r] . x[j], sb[r] = b[i_r] . y[j]. 16-byte loads: lane-private
// for x and y, broadcast for a and b.
template <int kMaxD, bool kTwo>
__device__ __forceinline__ void row_dots(const float* a, const float* x, const float* b,
                                         const float* y, float (&sa)[kRowsPerWarp],
                                         float (&sb)[kRowsPerWarp]) {
  constexpr int kLd = row_stride<kMaxD>();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) sa[r] = sb[r] = 0.f;
#pragma unroll 2
  for (int c = 0; c < kMaxD; c += 4) {
    const float4 xv = ld4(x + lane * kLd + c);
    const float4 yv = kTwo ? ld4(y + lane * kLd + c) : float4{};
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int i = warp + r * kWarps;
      sa[r] = dot4(ld4(a + i * kLd + c), xv, sa[r]);
      if (kTwo) sb[r] = dot4(ld4(b + i * kLd + c), yv, sb[r]);
    }
  }
}

// acc[r][c] += sum_j w[i_r][j] * m[j][lane + 32 c] over the 32 rows j of tile m, for the warp's
// rows i_r of the [kTile][kPLd] weights w (read four at a time, broadcast).
template <int kMaxD>
__device__ __forceinline__ void accumulate_rows(const float* w, const float* m,
                                                float (&acc)[kRowsPerWarp][kMaxD / 32]) {
  constexpr int kLd = row_stride<kMaxD>(), kC = kMaxD / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll 2
  for (int j = 0; j < kTile; j += 4) {
    float4 wr[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) wr[r] = ld4(w + (warp + r * kWarps) * kPLd + j);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      float mj[kC];
#pragma unroll
      for (int c = 0; c < kC; ++c) mj[c] = m[(j + jj) * kLd + lane + 32 * c];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float wv = get(wr[r], jj);
#pragma unroll
        for (int c = 0; c < kC; ++c) acc[r][c] = fmaf(wv, mj[c], acc[r][c]);
      }
    }
  }
}

// Stores v[r] at w[i_r][lane] for the warp's rows (the warp alone reads them back).
__device__ __forceinline__ void store_rows(float* w, const float (&v)[kRowsPerWarp]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncwarp();  // the warp's reads of the previous contents are done
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) w[(warp + r * kWarps) * kPLd + lane] = v[r];
  __syncwarp();
}

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kThreads) forward_kernel(Params p) {
  constexpr int kLd = row_stride<kMaxD>(), kC = kMaxD / 32;
  extern __shared__ float4 smem4[];
  float* sq = reinterpret_cast<float*>(smem4);
  float* sk = sq + kTile * kLd;
  float* sv = sk + kTile * kLd;
  float* sp = sv + kTile * kLd;  // [kTile][kPLd] probabilities of the current key tile
  const int tile = gridDim.y - 1 - blockIdx.y;  // longest rows first
  const int q0 = tile * kTile, b = blockIdx.x / p.hq, h = blockIdx.x % p.hq;
  const int hk = h / (p.hq / p.hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* q = static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h;
  const T* k = static_cast<const T*>(p.k) + b * p.ks.b + hk * p.ks.h;
  const T* v = static_cast<const T*>(p.v) + b * p.vs.b + hk * p.vs.h;
  load_tile<T, kMaxD>(sq, q, p.qs.t, q0, p.t, p.d);

  float acc[kRowsPerWarp][kC], m[kRowsPerWarp], l[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[r][c] = 0.f;
  }
  for (int kt = 0; kt <= tile; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous tile's readers are done
    load_tile<T, kMaxD>(sk, k, p.ks.t, k0, p.t, p.d);
    load_tile<T, kMaxD>(sv, v, p.vs.t, k0, p.t, p.d);
    __syncthreads();
    float s[kRowsPerWarp], unused[kRowsPerWarp];
    row_dots<kMaxD, false>(sq, sk, nullptr, nullptr, s, unused);
    float pr[kRowsPerWarp];
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = q0 + warp + r * kWarps;
      // Every processed tile holds key k0 <= q0 <= row, so the row max is finite.
      const float x = (key <= row && key < p.t) ? s[r] * p.scale : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      pr[r] = x == -INFINITY ? 0.f : expf(x - m_new);
      const float alpha = expf(m[r] - m_new);  // 0 on the first tile (m = -inf)
      l[r] = l[r] * alpha + warp_sum(pr[r]);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[r][c] *= alpha;
    }
    store_rows(sp, pr);
    accumulate_rows<kMaxD>(sp, sv, acc);
  }
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(blockIdx.x) * p.t * p.d;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = q0 + warp + r * kWarps;
    if (row >= p.t) continue;
    const float inv = 1.f / l[r];
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int col = lane + 32 * c;
      if (col < p.d) out[static_cast<int64_t>(row) * p.d + col] = from_f32<T>(acc[r][c] * inv);
    }
    if (lane == 0) p.lse_out[static_cast<int64_t>(blockIdx.x) * p.t + row] = m[r] + logf(l[r]);
  }
}

// delta[b, h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d]; one warp per row.
template <typename T>
__global__ void __launch_bounds__(kThreads) delta_kernel(Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.t;
  if (row >= rows) return;
  const int64_t bh = row / p.t, i = row % p.t, b = bh / p.hq, h = bh % p.hq;
  const T* o = static_cast<const T*>(p.o) + b * p.os.b + h * p.os.h + i * p.os.t;
  const T* g = static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h + i * p.dos.t;
  float acc = 0.f;
  for (int c = lane; c < p.d; c += 32) acc += to_f32(o[c]) * to_f32(g[c]);
  acc = warp_sum(acc);
  if (lane == 0) p.delta_out[row] = acc;
}

// P and dS for the warp's rows (i_r) and key lane, from the scores s = q.k and dp = dO.v.
__device__ __forceinline__ void probs_and_dscores(
    const Params& p, int q0, int k0, const float (&s)[kRowsPerWarp],
    const float (&dp)[kRowsPerWarp], const float (&lse)[kRowsPerWarp],
    const float (&delta)[kRowsPerWarp], float (&prob)[kRowsPerWarp], float (&ds)[kRowsPerWarp]) {
  const int warp = threadIdx.x / 32, key = k0 + threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = q0 + warp + r * kWarps;
    const bool valid = key <= row && row < p.t;  // key <= row < T implies key < T
    prob[r] = valid ? expf(s[r] * p.scale - lse[r]) : 0.f;
    ds[r] = prob[r] * (dp[r] - delta[r]);
  }
}

// Loads lse and delta of the warp's rows of query tile q0 (zero past T).
__device__ __forceinline__ void load_row_stats(const Params& p, int64_t bh, int q0,
                                               float (&lse)[kRowsPerWarp],
                                               float (&delta)[kRowsPerWarp]) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = q0 + warp + r * kWarps;
    lse[r] = row < p.t ? p.lse[bh * p.t + row] : 0.f;
    delta[r] = row < p.t ? p.delta[bh * p.t + row] : 0.f;
  }
}

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kThreads, kMaxD <= 64 ? 2 : 1) dkdv_kernel(Params p) {
  constexpr int kLd = row_stride<kMaxD>(), kC = kMaxD / 32;
  extern __shared__ float4 smem4[];
  float* sk = reinterpret_cast<float*>(smem4);
  float* sv = sk + kTile * kLd;
  float* sq = sv + kTile * kLd;
  float* sdo = sq + kTile * kLd;
  float* spt = sdo + kTile * kLd;    // [key][row] probabilities (transposed)
  float* sdst = spt + kTile * kPLd;  // [key][row] score gradients (transposed)
  const int k0 = blockIdx.y * kTile, b = blockIdx.x / p.hkv, hk = blockIdx.x % p.hkv;
  const int group = p.hq / p.hkv, tiles = (p.t + kTile - 1) / kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  load_tile<T, kMaxD>(sk, static_cast<const T*>(p.k) + b * p.ks.b + hk * p.ks.h, p.ks.t, k0, p.t,
                      p.d);
  load_tile<T, kMaxD>(sv, static_cast<const T*>(p.v) + b * p.vs.b + hk * p.vs.h, p.vs.t, k0, p.t,
                      p.d);
  float dk[kRowsPerWarp][kC], dv[kRowsPerWarp][kC];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kC; ++c) dk[r][c] = dv[r][c] = 0.f;

  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    const int64_t bh = static_cast<int64_t>(b) * p.hq + h;
    const T* q = static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h;
    const T* dout = static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h;
    for (int qt = blockIdx.y; qt < tiles; ++qt) {
      const int q0 = qt * kTile;
      __syncthreads();  // the previous tile's readers are done
      load_tile<T, kMaxD>(sq, q, p.qs.t, q0, p.t, p.d);
      load_tile<T, kMaxD>(sdo, dout, p.dos.t, q0, p.t, p.d);
      float lse[kRowsPerWarp], delta[kRowsPerWarp];
      load_row_stats(p, bh, q0, lse, delta);
      __syncthreads();
      float s[kRowsPerWarp], dp[kRowsPerWarp], prob[kRowsPerWarp], ds[kRowsPerWarp];
      row_dots<kMaxD, true>(sq, sk, sdo, sv, s, dp);
      probs_and_dscores(p, q0, k0, s, dp, lse, delta, prob, ds);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int i = warp + r * kWarps;
        spt[lane * kPLd + i] = prob[r];
        sdst[lane * kPLd + i] = ds[r];
      }
      __syncthreads();
      // The warp now owns keys j_r = warp + r * kWarps, lanes own columns lane + 32 c:
      // dV[j] += sum_i P[i][j] dO[i], dK[j] += sum_i dS[i][j] Q[i].
      accumulate_rows<kMaxD>(spt, sdo, dv);
      accumulate_rows<kMaxD>(sdst, sq, dk);
    }
  }
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.t * p.d;
  T* dk_out = static_cast<T*>(p.dk) + base;
  T* dv_out = static_cast<T*>(p.dv) + base;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int key = k0 + warp + r * kWarps;
    if (key >= p.t) continue;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int col = lane + 32 * c;
      if (col >= p.d) continue;
      dk_out[static_cast<int64_t>(key) * p.d + col] = from_f32<T>(dk[r][c] * p.scale);
      dv_out[static_cast<int64_t>(key) * p.d + col] = from_f32<T>(dv[r][c]);
    }
  }
}

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kThreads) dq_kernel(Params p) {
  constexpr int kLd = row_stride<kMaxD>(), kC = kMaxD / 32;
  extern __shared__ float4 smem4[];
  float* sq = reinterpret_cast<float*>(smem4);
  float* sdo = sq + kTile * kLd;
  float* sk = sdo + kTile * kLd;
  float* sv = sk + kTile * kLd;
  float* sds = sv + kTile * kLd;  // [kTile][kPLd] score gradients of the current key tile
  const int tile = gridDim.y - 1 - blockIdx.y;  // longest rows first
  const int q0 = tile * kTile, b = blockIdx.x / p.hq, h = blockIdx.x % p.hq;
  const int hk = h / (p.hq / p.hkv);
  const int lane = threadIdx.x % 32;
  const T* k = static_cast<const T*>(p.k) + b * p.ks.b + hk * p.ks.h;
  const T* v = static_cast<const T*>(p.v) + b * p.vs.b + hk * p.vs.h;
  load_tile<T, kMaxD>(sq, static_cast<const T*>(p.q) + b * p.qs.b + h * p.qs.h, p.qs.t, q0, p.t,
                      p.d);
  load_tile<T, kMaxD>(sdo, static_cast<const T*>(p.dout) + b * p.dos.b + h * p.dos.h, p.dos.t, q0,
                      p.t, p.d);
  float lse[kRowsPerWarp], delta[kRowsPerWarp];
  load_row_stats(p, blockIdx.x, q0, lse, delta);
  float acc[kRowsPerWarp][kC];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[r][c] = 0.f;

  for (int kt = 0; kt <= tile; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();
    load_tile<T, kMaxD>(sk, k, p.ks.t, k0, p.t, p.d);
    load_tile<T, kMaxD>(sv, v, p.vs.t, k0, p.t, p.d);
    __syncthreads();
    float s[kRowsPerWarp], dp[kRowsPerWarp], prob[kRowsPerWarp], ds[kRowsPerWarp];
    row_dots<kMaxD, true>(sq, sk, sdo, sv, s, dp);
    probs_and_dscores(p, q0, k0, s, dp, lse, delta, prob, ds);
    store_rows(sds, ds);
    accumulate_rows<kMaxD>(sds, sk, acc);
  }
  T* dq = static_cast<T*>(p.dq) + static_cast<int64_t>(blockIdx.x) * p.t * p.d;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = q0 + warp + r * kWarps;
    if (row >= p.t) continue;
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      const int col = lane + 32 * c;
      if (col < p.d) dq[static_cast<int64_t>(row) * p.d + col] = from_f32<T>(acc[r][c] * p.scale);
    }
  }
}

// ---- host side ----

Bht strides_of(const Tensor& x) { return {x.strides()[0], x.strides()[1], x.strides()[2]}; }

void check_args(const Tensor& q, const Tensor& k, const Tensor& v) {
  const DType t = q.dtype();
  KILN_CHECK(t == DType::kF32 || t == DType::kBF16 || t == DType::kF16)
      << "causal_attention (kiln CUDA kernel): f32, bf16 or f16 only, got " << q.str();
  KILN_CHECK(q.size(3) <= kKilnMaxHeadDim)
      << "causal_attention (kiln CUDA kernel): head dim D <= " << kKilnMaxHeadDim << ", got "
      << q.str();
  for (const Tensor* x : {&q, &k, &v})
    KILN_CHECK(x->strides()[3] == 1) << "causal_attention: D must have unit stride, " << x->str();
  KILN_CHECK(q.size(0) * q.size(1) <= 0x7fffffff && q.size(2) <= 0x7fffffff)
      << "causal_attention: shape too large for the kiln kernel, " << q.str();
}

Params make_params(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  Params p{};
  p.q = q.raw();
  p.k = k.raw();
  p.v = v.raw();
  p.qs = strides_of(q);
  p.ks = strides_of(k);
  p.vs = strides_of(v);
  p.b = static_cast<int>(q.size(0));
  p.hq = static_cast<int>(q.size(1));
  p.hkv = static_cast<int>(k.size(1));
  p.t = static_cast<int>(q.size(2));
  p.d = static_cast<int>(q.size(3));
  p.scale = static_cast<float>(scale);
  return p;
}

template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem_floats, const Params& p) {
  const size_t bytes = smem_floats * sizeof(float);
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(bytes)));
  kernel<<<grid, kThreads, bytes, cuda::compute_stream()>>>(p);
  KILN_CUDA_CHECK_LAUNCH();
}

// Calls f.template operator()<T, kMaxD>() for the tensor dtype and the smallest tile width >= d.
template <typename F>
void dispatch(DType t, int64_t d, F&& f) {
  auto by_d = [&]<typename T>() {
    if (d <= 32) return f.template operator()<T, 32>();
    if (d <= 64) return f.template operator()<T, 64>();
    if (d <= 128) return f.template operator()<T, 128>();
    return f.template operator()<T, 256>();
  };
  if (t == DType::kF32) return by_d.template operator()<float>();
  if (t == DType::kBF16) return by_d.template operator()<__nv_bfloat16>();
  return by_d.template operator()<__half>();
}

unsigned tiles_of(int64_t t) { return static_cast<unsigned>((t + kTile - 1) / kTile); }

}  // namespace

void kiln_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                            const Tensor& out, const Tensor& lse) {
  check_args(q, k, v);
  cuda::DeviceGuard guard(cuda::device_of(q));
  Params p = make_params(q, k, v, scale);
  p.out = out.raw();
  p.lse_out = lse.data<float>();
  const dim3 grid(static_cast<unsigned>(p.b * p.hq), tiles_of(p.t));
  dispatch(q.dtype(), p.d, [&]<typename T, int kMaxD>() {
    launch(forward_kernel<T, kMaxD>, grid, 3 * kTile * row_stride<kMaxD>() + kTile * kPLd, p);
  });
}

void kiln_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& dout, const Tensor& lse, double scale, const Tensor& dq,
                             const Tensor& dk, const Tensor& dv) {
  check_args(q, k, v);
  cuda::DeviceGuard guard(cuda::device_of(q));
  KILN_CHECK(out.strides()[3] == 1 && dout.strides()[3] == 1)
      << "causal_attention backward: out and dout need unit stride in D";
  Tensor delta = Tensor::empty({q.size(0), q.size(1), q.size(2)}, DType::kF32, q.device());
  Params p = make_params(q, k, v, scale);
  p.o = out.raw();
  p.dout = dout.raw();
  p.os = strides_of(out);
  p.dos = strides_of(dout);
  p.lse = lse.data<float>();
  p.delta = delta.data<float>();
  p.delta_out = delta.data<float>();
  p.dq = dq.raw();
  p.dk = dk.raw();
  p.dv = dv.raw();
  const int64_t rows = static_cast<int64_t>(p.b) * p.hq * p.t;
  dispatch(q.dtype(), p.d, [&]<typename T, int kMaxD>() {
    launch(delta_kernel<T>, dim3(static_cast<unsigned>((rows + kWarps - 1) / kWarps)), 0, p);
    launch(dkdv_kernel<T, kMaxD>, dim3(static_cast<unsigned>(p.b * p.hkv), tiles_of(p.t)),
           4 * kTile * row_stride<kMaxD>() + 2 * kTile * kPLd, p);
    launch(dq_kernel<T, kMaxD>, dim3(static_cast<unsigned>(p.b * p.hq), tiles_of(p.t)),
           4 * kTile * row_stride<kMaxD>() + kTile * kPLd, p);
  });
}

}  // namespace kiln::attention_cuda
