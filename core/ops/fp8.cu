// CUDA side of core/ops/fp8.{h,cc}: the amax reduction, the casts to fp8 (row-wise, transposed,
// or both in one pass) with the scale computed on the device from the amax, and the fp8 GEMMs
// through cuBLASLt.
//
// amax: a grid-stride max of |x| over 16-byte vector loads (scalar for a misaligned pointer and
// the tail) on the bit patterns of |x| (for non-negative floats the unsigned order is the float
// order, and a NaN, whose bits exceed +inf's, wins), reduced per block and merged with one
// atomicMax per block; the result is exact and independent of the launch shape.
// Casts: every thread derives scale = fp8_max / amax from the stored amax (the same IEEE division
// in every thread), one thread stores {scale, 1 / scale}; q = cvt.rn.satfinite(x * scale), which
// gives the bits of core/dtype.cc's f32_to_fp8 of the f32 product (round to nearest even with
// subnormals, saturation to the largest finite value; NaN is mapped to dtype.cc's NaN pattern
// explicitly). The transposing cast goes through a 32 x 32 tile in shared memory so that both the
// bf16 reads and the fp8 writes are coalesced; it can also sum x's columns on the way (the bias
// gradient of dY, KILN_FP8_FUSED_DBIAS=1): f32 partials per chunk of row tiles, then
// sum_chunks_kernel adds them in a fixed order (core/ops/fp8_colsum.h).
// GEMMs: cuBLASLt's fp8 kernels need both operands contiguous along K ("TN"), so everything here
// is D (m, n) = (a_descale * A (m, k)) (b_descale * B (n, k))^T with A, B row-major fp8 (at most
// one of them e5m2) and D bf16, optionally with the bias in the epilogue, through kiln's one
// cuBLASLt path (core/cuda/gemm.h; GemmParams::b_dtype carries the mixed e5m2 x e4m3 pairs), also
// with bias + GELU in the epilogue, which stores the bf16 GELU input (GELU_AUX_BIAS).
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <string>

#include "core/check.h"
#include "core/cuda/gemm.h"
#include "core/ops/cuda_util.cuh"
#include "core/ops/fp8.h"
#include "core/ops/fp8_colsum.h"
#include "core/ops/sum_chunks.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;     // transposing cast: kTile x kTile elements per block iteration
constexpr int kTileRows = 8;  // threads per tile column (blockDim = (kTile, kTileRows))
static_assert(kTile == fp8_colsum::kTile && kTileRows == fp8_colsum::kThreadRows,
              "the column sums' plan assumes the transposing cast's tile");

bool is_fp8(DType t) { return t == DType::kF8E4M3 || t == DType::kF8E5M2; }

// ---- device helpers ----

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

// Bits of |v| (non-negative: unsigned order = float order; NaN above +inf).
template <typename T>
__device__ __forceinline__ unsigned int abs_bits(T v) {
  return __float_as_uint(fabsf(to_f32(v)));
}

// scale = fp8_max / amax; 1 for amax == 0; FLT_MAX when the division overflows (a subnormal
// amax). A NaN or infinite amax gives a NaN or zero scale, so the bad input shows in the output.
__device__ __forceinline__ float scale_from_amax(float amax, float fp8_max) {
  if (amax == 0.0f) return 1.0f;
  const float s = __fdiv_rn(fp8_max, amax);
  return isinf(s) ? FLT_MAX : s;
}

// v rounded to fp8 (round to nearest even, saturating), as f32_to_fp8 in core/dtype.cc.
template <bool kE4>
__device__ __forceinline__ uint8_t to_fp8(float v) {
  if (isnan(v)) return kE4 ? 0x7f : 0x7e;  // dtype.cc's NaN patterns
  return static_cast<uint8_t>(
      __nv_cvt_float_to_fp8(v, __NV_SATFINITE, kE4 ? __NV_E4M3 : __NV_E5M2));
}

// Block 0's first thread stores {scale, 1 / scale} into meta[1], meta[2], the amax it scaled by
// into meta[0] when that came from elsewhere (delayed scaling: a history slot), and zeroes *zero
// (the history slot the next use will reduce into) when given.
__device__ __forceinline__ void store_meta(float* meta, const float* amax_in, float amax, float s,
                                           unsigned int* zero) {
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) {
    if (amax_in != meta) meta[0] = amax;
    meta[1] = s;
    meta[2] = __frcp_rn(s);
    if (zero != nullptr) *zero = 0;
  }
}

// ---- kernels ----

// *out = max(*out, max |x|) on the bit patterns. REQUIRES: with vec, x is 16-byte aligned.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    amax_kernel(const T* __restrict__ x, int64_t n, bool vec, unsigned int* __restrict__ out) {
  __shared__ unsigned int scratch[32];
  constexpr int kN = 16 / sizeof(T);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  unsigned int m = 0;
  int64_t done = 0;
  if (vec) {
    const int64_t nv = n / kN;
    const Vec<T, kN>* xv = reinterpret_cast<const Vec<T, kN>*>(x);
    for (int64_t i = tid; i < nv; i += stride) {
      const Vec<T, kN> v = xv[i];
#pragma unroll
      for (int j = 0; j < kN; ++j) m = max(m, abs_bits(v.v[j]));
    }
    done = nv * kN;
  }
  for (int64_t i = done + tid; i < n; i += stride) m = max(m, abs_bits(x[i]));
  m = block_max(m, scratch);
  if (threadIdx.x == 0 && m != 0) atomicMax(out, m);
}

// The pointers every cast kernel takes: the amax to scale by (meta[0] for current scaling, a
// history slot for delayed scaling), the {amax, scale, descale} it stores, and for delayed
// scaling the slot that receives max |x| of this cast (kAmax) and the one it zeroes.
struct CastMeta {
  const float* amax_in;
  float* meta;
  unsigned int* amax_out;  // kAmax only
  unsigned int* zero;      // or nullptr
};

// q[i] = fp8(x[i] * scale) over x (n) contiguous; kAmax: *amax_out = max(*amax_out, max |x|).
// REQUIRES: with vec, x is 16-byte aligned and q is (16 / sizeof(T))-byte aligned.
template <typename T, bool kE4, bool kAmax>
__global__ void __launch_bounds__(kThreads)
    cast_kernel(const T* __restrict__ x, int64_t n, bool vec, CastMeta cm, float fp8_max,
                uint8_t* __restrict__ q) {
  constexpr int kN = 16 / sizeof(T);
  const float a = *cm.amax_in;
  const float s = scale_from_amax(a, fp8_max);
  store_meta(cm.meta, cm.amax_in, a, s, cm.zero);
  unsigned int m = 0;  // kAmax: this thread's max |x| bits
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if (vec) {
    const int64_t nv = n / kN;
    const Vec<T, kN>* xv = reinterpret_cast<const Vec<T, kN>*>(x);
    Vec<uint8_t, kN>* qv = reinterpret_cast<Vec<uint8_t, kN>*>(q);
    for (int64_t i = tid; i < nv; i += stride) {
      const Vec<T, kN> v = xv[i];
      Vec<uint8_t, kN> o;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        o.v[j] = to_fp8<kE4>(__fmul_rn(to_f32(v.v[j]), s));
        if constexpr (kAmax) m = max(m, abs_bits(v.v[j]));
      }
      qv[i] = o;
    }
    done = nv * kN;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    q[i] = to_fp8<kE4>(__fmul_rn(to_f32(x[i]), s));
    if constexpr (kAmax) m = max(m, abs_bits(x[i]));
  }
  if constexpr (kAmax) {
    __shared__ unsigned int scratch[32];
    m = block_max(m, scratch);
    if (threadIdx.x == 0 && m != 0) atomicMax(cm.amax_out, m);
  }
}

// x (rows, cols) contiguous -> q (rows, cols) when kRow, and qt (cols, rows) = q^T. Block
// (kTile, kTileRows); blockIdx.x walks column tiles, blockIdx.y (grid-stride) row tiles. kSum:
// partial[blockIdx.y][c] = the f32 sum of x[r][c] over the block's rows (fp8_colsum.h's order).
// kAmax: *amax_out = max(*amax_out, max |x|).
template <typename T, bool kE4, bool kRow, bool kSum, bool kAmax>
__global__ void __launch_bounds__(kTile* kTileRows)
    cast_transpose_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, CastMeta cm,
                          float fp8_max, uint8_t* __restrict__ q, uint8_t* __restrict__ qt,
                          float* __restrict__ partial) {
  __shared__ uint8_t tile[kTile][kTile + 4];
  const float a = *cm.amax_in;
  const float s = scale_from_amax(a, fp8_max);
  store_meta(cm.meta, cm.amax_in, a, s, cm.zero);
  unsigned int m = 0;  // kAmax: this thread's max |x| bits
  const int64_t tiles_r = (rows + kTile - 1) / kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile;
  float acc = 0;  // kSum: this thread's rows of column c0 + threadIdx.x
  for (int64_t tr = blockIdx.y; tr < tiles_r; tr += gridDim.y) {
    const int64_t r0 = tr * kTile;
    __syncthreads();  // the previous tile's readers are done
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t r = r0 + i, c = c0 + threadIdx.x;
      if (r < rows && c < cols) {
        const float xv = to_f32(x[r * cols + c]);
        if constexpr (kSum) acc += xv;
        if constexpr (kAmax) m = max(m, __float_as_uint(fabsf(xv)));
        const uint8_t v = to_fp8<kE4>(__fmul_rn(xv, s));
        if (kRow) q[r * cols + c] = v;
        tile[i][threadIdx.x] = v;
      }
    }
    __syncthreads();
    for (int i = threadIdx.y; i < kTile; i += kTileRows) {
      const int64_t c = c0 + i, r = r0 + threadIdx.x;
      if (c < cols && r < rows) qt[c * rows + r] = tile[threadIdx.x][i];
    }
  }
  if constexpr (kSum) {  // the block's thread rows, in order, into one partial per column
    __shared__ float sums[kTileRows][kTile];
    sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    const int64_t c = c0 + threadIdx.x;
    if (threadIdx.y == 0 && c < cols) {
      float t = 0;
#pragma unroll
      for (int y = 0; y < kTileRows; ++y) t += sums[y][threadIdx.x];
      partial[blockIdx.y * cols + c] = t;
    }
  }
  if constexpr (kAmax) {  // a warp is one thread row (blockDim.x == 32): warp maxima, then one
    // atomicMax per block
    __shared__ unsigned int rows_max[kTileRows];
    m = warp_max(m);
    if (threadIdx.x == 0) rows_max[threadIdx.y] = m;
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
      unsigned int t = 0;
#pragma unroll
      for (int y = 0; y < kTileRows; ++y) t = max(t, rows_max[y]);
      if (t != 0) atomicMax(cm.amax_out, t);
    }
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

unsigned int grid_for(int64_t work) {
  const int64_t cap = static_cast<int64_t>(sm_count()) * 8;
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(b, cap)));
}

template <typename T>
void launch_amax(const Tensor& x, unsigned int* out) {
  const int64_t n = x.numel();
  constexpr int kN = 16 / sizeof(T);
  const bool vec = aligned(x.raw(), 16);
  amax_kernel<T><<<grid_for(vec ? n / kN + 1 : n), kThreads, 0, compute_stream()>>>(
      static_cast<const T*>(x.raw()), n, vec, out);
  KILN_CUDA_CHECK_LAUNCH();
}

// The transposing cast of x2 (rows, cols) into qt (and q when defined); with colsum defined (T,
// (cols)), also x2's column sums (fp8_colsum.h: partials, then sum_chunks_kernel).
template <typename T, bool kE4>
void launch_cast_transpose(const Tensor& x2, const CastMeta& cm, float fp8_max, const Tensor& q,
                           const Tensor& qt, const Tensor& colsum) {
  const int64_t rows = x2.size(0), cols = x2.size(1);
  const int64_t tiles_c = (cols + kTile - 1) / kTile, tiles_r = (rows + kTile - 1) / kTile;
  KILN_CHECK(tiles_c < (int64_t{1} << 31)) << "fp8 cast: too many columns " << x2.str();
  const fp8_colsum::Plan plan = fp8_colsum::plan(rows);
  const int64_t grid_r = colsum.defined() ? plan.chunks : std::min<int64_t>(tiles_r, 65535);
  const dim3 grid(static_cast<unsigned int>(tiles_c), static_cast<unsigned int>(grid_r));
  const dim3 block(kTile, kTileRows);
  const T* x = static_cast<const T*>(x2.raw());
  uint8_t* qp = q.defined() ? static_cast<uint8_t*>(q.raw()) : nullptr;
  uint8_t* qtp = static_cast<uint8_t*>(qt.raw());
  Tensor partial =
      colsum.defined() ? Tensor::empty({plan.chunks, cols}, DType::kF32, x2.device()) : Tensor();
  float* pp = colsum.defined() ? static_cast<float*>(partial.raw()) : nullptr;
  auto launch = [&](auto row, auto sum, auto amax) {
    cast_transpose_kernel<T, kE4, decltype(row)::value, decltype(sum)::value, decltype(amax)::value>
        <<<grid, block, 0, compute_stream()>>>(x, rows, cols, cm, fp8_max, qp, qtp, pp);
    KILN_CUDA_CHECK_LAUNCH();
  };
  using Yes = std::true_type;
  using No = std::false_type;
  auto with_amax = [&](auto row, auto sum) {
    cm.amax_out != nullptr ? launch(row, sum, Yes()) : launch(row, sum, No());
  };
  if (q.defined()) {
    colsum.defined() ? with_amax(Yes(), Yes()) : with_amax(Yes(), No());
  } else {
    colsum.defined() ? with_amax(No(), Yes()) : with_amax(No(), No());
  }
  if (!colsum.defined()) return;
  sum_chunks_kernel<T><<<static_cast<unsigned int>((cols + kThreads - 1) / kThreads), kThreads, 0,
                         compute_stream()>>>(pp, static_cast<T*>(colsum.raw()), plan.chunks, cols);
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T, bool kE4>
void launch_cast(const Tensor& x2, const CastMeta& cm, float fp8_max, const Tensor& q,
                 const Tensor& qt, const Tensor& colsum) {
  const T* x = static_cast<const T*>(x2.raw());
  if (qt.defined()) return launch_cast_transpose<T, kE4>(x2, cm, fp8_max, q, qt, colsum);
  const int64_t n = x2.numel();
  constexpr int kN = 16 / sizeof(T);
  const bool vec = aligned(x, 16) && aligned(q.raw(), kN);
  const unsigned int grid = grid_for(vec ? n / kN + 1 : n);
  uint8_t* qp = static_cast<uint8_t*>(q.raw());
  if (cm.amax_out != nullptr) {
    cast_kernel<T, kE4, true><<<grid, kThreads, 0, compute_stream()>>>(x, n, vec, cm, fp8_max, qp);
  } else {
    cast_kernel<T, kE4, false><<<grid, kThreads, 0, compute_stream()>>>(x, n, vec, cm, fp8_max, qp);
  }
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_cast_t(const Tensor& x2, const CastMeta& cm, DType fp8, const Tensor& q,
                   const Tensor& qt, const Tensor& colsum) {
  const float mx = static_cast<float>(fp8_max(fp8));
  if (fp8 == DType::kF8E4M3) {
    launch_cast<T, true>(x2, cm, mx, q, qt, colsum);
  } else {
    launch_cast<T, false>(x2, cm, mx, q, qt, colsum);
  }
}

// fp8_cast and fp8_cast_delayed below: the checks, then the dtype dispatch.
void cast_checked(const Tensor& x2, const CastMeta& cm, const Tensor& q, const Tensor& qt,
                  const Tensor& colsum) {
  DeviceGuard guard(device_of(x2));
  check_on_current_device("fp8_quantize", "x", x2);
  KILN_CHECK(q.defined() || qt.defined()) << "internal: fp8_cast with no output";
  const DType fp8 = q.defined() ? q.dtype() : qt.dtype();
  KILN_CHECK(is_fp8(fp8) && (!qt.defined() || qt.dtype() == fp8))
      << "internal: fp8_cast outputs must share one fp8 dtype";
  KILN_CHECK(!colsum.defined() || (qt.defined() && colsum.dtype() == x2.dtype() &&
                                   colsum.is_contiguous() && colsum.numel() == x2.size(1)))
      << "internal: fp8_cast column sums " << colsum.str() << " for x " << x2.str();
  switch (x2.dtype()) {
    case DType::kBF16:
      launch_cast_t<__nv_bfloat16>(x2, cm, fp8, q, qt, colsum);
      break;
    case DType::kF16:
      launch_cast_t<__half>(x2, cm, fp8, q, qt, colsum);
      break;
    case DType::kF32:
      launch_cast_t<float>(x2, cm, fp8, q, qt, colsum);
      break;
    default:
      KILN_CHECK(false) << "fp8_quantize: no kernel for " << x2.str();
  }
}

}  // namespace

// ---- entry points (declared in core/ops/fp8.cc) ----

void fp8_require_gpu(const char* op, const Tensor& t) {
  DeviceGuard guard(device_of(t));
  const int cc = compute_capability();
  KILN_CHECK(cc >= 89) << op << ": fp8 GEMMs need a GPU of compute capability 8.9 or newer (Ada, "
                       << "Hopper); " << t.device() << " is " << cc / 10 << "." << cc % 10;
}

// x: contiguous bf16 / f16 / f32 (numel > 0); meta: f32 (>= 1). Zeroes meta[0], then reduces
// max |x| into it.
void fp8_amax(const Tensor& x, const Tensor& meta) {
  DeviceGuard guard(device_of(x));
  check_on_current_device("fp8_amax", "x", x);
  unsigned int* out = static_cast<unsigned int*>(meta.raw());
  KILN_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(unsigned int), compute_stream()));
  switch (x.dtype()) {
    case DType::kBF16:
      launch_amax<__nv_bfloat16>(x, out);
      break;
    case DType::kF16:
      launch_amax<__half>(x, out);
      break;
    case DType::kF32:
      launch_amax<float>(x, out);
      break;
    default:
      KILN_CHECK(false) << "fp8_amax: no kernel for " << x.str();
  }
}

// x2 (R, C) contiguous; meta (3) f32 with meta[0] = amax. Stores meta[1] = scale, meta[2] =
// 1 / scale, q (R, C) when defined and qt (C, R) when defined, both in q's / qt's fp8 dtype;
// colsum (C) of x2's dtype, when defined (qt must be), receives x2's column sums.
void fp8_cast(const Tensor& x2, const Tensor& meta, const Tensor& q, const Tensor& qt,
              const Tensor& colsum) {
  float* m = static_cast<float*>(meta.raw());
  cast_checked(x2, CastMeta{m, m, nullptr, nullptr}, q, qt, colsum);
}

// Delayed scaling: slots (3) f32, a ring of the amaxes of one tensor role's uses; `use` counts
// the uses before this one. Use k scales by slot (k - 1) % 3 (use 0: by meta[0], which the caller
// has filled with x2's own amax), reduces max |x2| into slot k % 3 (zeroed by use k - 1, or at
// allocation) and zeroes slot (k + 1) % 3 for use k + 1; those three are distinct, so no slot is
// both read and written by one cast. meta receives {the amax scaled by, scale, 1 / scale}.
void fp8_cast_delayed(const Tensor& x2, const Tensor& meta, const Tensor& slots, int64_t use,
                      const Tensor& q, const Tensor& qt, const Tensor& colsum) {
  KILN_CHECK(slots.dtype() == DType::kF32 && slots.numel() == 3 && slots.is_contiguous() &&
             slots.device() == x2.device() && use >= 0)
      << "internal: fp8 history " << slots.str() << " (use " << use << ") for x " << x2.str();
  float* m = static_cast<float*>(meta.raw());
  float* h = static_cast<float*>(slots.raw());
  const float* in = use == 0 ? m : h + (use - 1) % 3;
  unsigned int* out = reinterpret_cast<unsigned int*>(h + use % 3);
  unsigned int* zero = reinterpret_cast<unsigned int*>(h + (use + 1) % 3);
  cast_checked(x2, CastMeta{in, m, out, zero}, q, qt, colsum);
}

namespace {
// The "TN" fp8 GEMM of a (m, k) and b (n, k) into d (m, n) (kiln's one cuBLASLt path,
// core/cuda/gemm.h): both operands contiguous fp8 along K, the descales 0-dim f32 on the device.
GemmParams tn_params(const Tensor& a, const Tensor& a_descale, const Tensor& b,
                     const Tensor& b_descale, const Tensor& d) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(0);
  KILN_CHECK(is_fp8(a.dtype()) && is_fp8(b.dtype()) && a.is_contiguous() && b.is_contiguous() &&
             d.is_contiguous() && b.size(1) == k && d.dim() == 2 && d.size(0) == m &&
             d.size(1) == n)
      << "internal: fp8 GEMM with a " << a.str() << ", b " << b.str() << ", d " << d.str();
  GemmParams p;
  p.ab_dtype = a.dtype();
  if (b.dtype() != a.dtype()) p.b_dtype = b.dtype();
  p.d_dtype = d.dtype();
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a.raw();
  p.lda = k;
  p.b = b.raw();
  p.ldb = k;
  p.trans_b = true;
  p.d = d.raw();
  p.ldd = n;
  p.a_scale = static_cast<const float*>(a_descale.raw());
  p.b_scale = static_cast<const float*>(b_descale.raw());
  return p;
}
}  // namespace

// d (m, n) bf16 = (a_descale a (m, k)) (b_descale b (n, k))^T (+ c (m, n) bf16) (+ bias (n)
// bf16). With gelu_aux (m, n) bf16 defined: gelu_aux = that sum and d = gelu_tanh(gelu_aux), in
// the epilogue (GELU_AUX(_BIAS)). c (a residual, contiguous) is added by the GEMM (beta = 1,
// before the bias). Returns false (nothing ran) when cuBLASLt offers no algorithm.
bool fp8_gemm_tn(const Tensor& a, const Tensor& a_descale, const Tensor& b, const Tensor& b_descale,
                 const Tensor& bias, const Tensor& d, bool fast_accum, const Tensor& gelu_aux,
                 const Tensor& c) {
  DeviceGuard guard(device_of(a));
  KILN_CHECK(d.dtype() == DType::kBF16) << "internal: fp8 GEMM into " << d.str();
  GemmParams p = tn_params(a, a_descale, b, b_descale, d);
  p.fast_accum = fast_accum;
  if (bias.defined()) {
    p.epilogue = GemmEpilogue::kBias;
    p.bias = bias.raw();
  }
  if (gelu_aux.defined()) {
    KILN_CHECK(gelu_aux.dtype() == DType::kBF16 && gelu_aux.is_contiguous() &&
               gelu_aux.shape() == d.shape())
        << "internal: fp8 GEMM GELU input " << gelu_aux.str() << " for d " << d.str();
    p.epilogue = GemmEpilogue::kGeluAux;  // GELU_AUX_BIAS with a bias (core/cuda/gemm.cc)
    p.aux = gelu_aux.raw();
    p.ld_aux = p.n;
  }
  if (c.defined()) {
    KILN_CHECK(c.dtype() == DType::kBF16 && c.is_contiguous() && c.shape() == d.shape())
        << "internal: fp8 GEMM residual " << c.str() << " for d " << d.str();
    p.c = c.raw();
    p.ldc = p.n;
    p.beta = 1.0;
  }
  return gemm(p);
}

// d (m, n) f32 (+)= (a_descale a (m, k)) (b_descale b (n, k))^T: added into d (beta = 1), or
// written over it when `overwrite` (beta = 0). Returns false (nothing ran) when cuBLASLt offers
// no algorithm.
bool fp8_gemm_tn_f32(const Tensor& a, const Tensor& a_descale, const Tensor& b,
                     const Tensor& b_descale, const Tensor& d, bool overwrite) {
  DeviceGuard guard(device_of(a));
  KILN_CHECK(d.dtype() == DType::kF32) << "internal: fp8 f32 GEMM into " << d.str();
  GemmParams p = tn_params(a, a_descale, b, b_descale, d);
  p.beta = overwrite ? 0.0 : 1.0;
  return gemm(p);
}

}  // namespace kiln::cuda
