// CUDA kernels of rotary_embedding (core/ops/rope.cc). A first kernel builds the (T, D/2) cos / sin
// tables with the CPU op's arithmetic (inverse frequency, angle, cos and sin in f64, then rounded
// to the compute type); the rotation kernels then rotate each pair (i, i + D/2) of every (b, h, t)
// row, reading x through its strides (no contiguous copy) and writing the result through its
// strides (D innermost): contiguous, or into a view the caller passes (rope_into).
//  - v2 (the default): the tables are cached per (device, T, D, theta, offset, compute dtype), at
//    most kRopeTableCacheSize entries (not while the stream is being captured into a CUDA graph:
//    a captured build would only run with the graph). The rotation uses 32-bit index math
//    (core/ops/rope_index.h, unit-tested on the CPU) in x's memory order; each thread rotates
//    `vec` pairs with 16-byte (or narrower) loads and stores where x's innermost dim is contiguous
//    and aligned (rope_kernel_vec), else one pair (rope_kernel_scalar32), of up to 4 heads at one
//    position when heads are outer in memory (their cos / sin loaded once; with heads inner, the
//    threads of a warp share them). Where an offset needs 64 bits, the v1 rotation kernel runs
//    with the cached tables.
//  - v1 (KILN_ROPE=v1, read once; for A/B measurements): the tables rebuilt on every call, one
//    pair per thread with 64-bit index math (rope_kernel).
// Every kernel rotates a pair with the same roundings (rotate() below), so v1 and v2 give the
// same bits. 256-thread blocks, grid-stride loops.
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/ops/cuda_util.cuh"
#include "core/ops/rope_cuda.h"
#include "core/ops/rope_index.h"

namespace kiln::cuda {
namespace {

constexpr const char* kOp = "rotary_embedding";
constexpr int kThreads = 256;

thread_local RopePath g_last_path = RopePath::kNone;
thread_local int g_last_vec = 0;

// ---- arithmetic ----

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

// One pair: o1 = x1 c - x2 sn, o2 = x2 c + x1 sn, each a fused multiply-add onto a rounded
// product. The roundings are spelled out (nothing is left to the compiler's contraction), so every
// kernel gives the same bits whatever code surrounds it.
template <typename A>
__device__ __forceinline__ void rotate(A x1, A x2, A c, A sn, A& o1, A& o2) {
  o1 = fma_rn(x1, c, -mul_rn(x2, sn));
  o2 = fma_rn(x2, c, mul_rn(x1, sn));
}

// ---- kernels ----

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
  int64_t ob, oh, ot;      // the result's (B, H, T) strides (elements); its D stride is 1
};

// v1: out (B, H, T, D) through (ob, oh, ot) = x rotated by +angle (sign 1) or -angle (sign -1),
// one pair per thread, 64-bit index math.
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
    A o1, o2;
    rotate(x1, x2, c, sn, o1, o2);
    T* o = out + b * s.ob + h * s.oh + t * s.ot;
    o[i] = from_acc<T>(o1);
    o[i + half] = from_acc<T>(o2);
  }
}

// v2, any strides: one pair of each of m.hp heads per unit of m (rope_index.h), 32-bit index
// math.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    rope_kernel_scalar32(const T* __restrict__ x, T* __restrict__ out,
                         const acc_t<T>* __restrict__ cos_t, const acc_t<T>* __restrict__ sin_t,
                         rope_index::Map m, acc_t<T> sign) {
  using A = acc_t<T>;
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < m.units;
       k += gridDim.x * blockDim.x) {
    const rope_index::Unit u0 = rope_index::unit_of(k, m);
    const A c = cos_t[u0.tab], sn = sign * sin_t[u0.tab];
    for (uint32_t hh = 0; hh < m.hp; ++hh) {
      const rope_index::Unit u = rope_index::head_of(u0, hh, m);
      A o1, o2;
      rotate(to_acc(x[u.x1]), to_acc(x[u.x2]), c, sn, o1, o2);
      out[u.out] = from_acc<T>(o1);
      out[u.out + m.half] = from_acc<T>(o2);
    }
  }
}

// v2, x's innermost stride 1 and every access aligned (rope_index::vec_width): kV pairs of each of
// m.hp <= kH heads per unit, read and written as one access of kV elements per half row; every
// head's loads are issued before the first store. kH = 1 where m.hp = 1 keeps the registers (and
// so the occupancy) of one head.
template <typename T, int kV, uint32_t kH>
__global__ void __launch_bounds__(kThreads)
    rope_kernel_vec(const T* __restrict__ x, T* __restrict__ out,
                    const acc_t<T>* __restrict__ cos_t, const acc_t<T>* __restrict__ sin_t,
                    rope_index::Map m, acc_t<T> sign) {
  using A = acc_t<T>;
  using VT = Vec<T, kV>;
  using VA = Vec<A, kV>;
  for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < m.units;
       k += gridDim.x * blockDim.x) {
    const rope_index::Unit u0 = rope_index::unit_of(k, m);
    VT a[kH], b[kH];
#pragma unroll
    for (uint32_t hh = 0; hh < kH; ++hh) {
      if (hh < m.hp) {
        const rope_index::Unit u = rope_index::head_of(u0, hh, m);
        a[hh] = *reinterpret_cast<const VT*>(x + u.x1);
        b[hh] = *reinterpret_cast<const VT*>(x + u.x2);
      }
    }
    const VA c = *reinterpret_cast<const VA*>(cos_t + u0.tab);
    const VA s = *reinterpret_cast<const VA*>(sin_t + u0.tab);
#pragma unroll
    for (uint32_t hh = 0; hh < kH; ++hh) {
      if (hh < m.hp) {
        VT o1, o2;
#pragma unroll
        for (int l = 0; l < kV; ++l) {
          A r1, r2;
          rotate(to_acc(a[hh].v[l]), to_acc(b[hh].v[l]), c.v[l], sign * s.v[l], r1, r2);
          o1.v[l] = from_acc<T>(r1);
          o2.v[l] = from_acc<T>(r2);
        }
        const rope_index::Unit u = rope_index::head_of(u0, hh, m);
        *reinterpret_cast<VT*>(out + u.out) = o1;
        *reinterpret_cast<VT*>(out + u.out + m.half) = o2;
      }
    }
  }
}

// ---- angle tables ----

struct Tables {
  Tensor cos, sin;  // (T, D/2), the compute dtype, on the device
};

Tables build_tables(int64_t t_len, int64_t d, double theta, int64_t offset, DType ad,
                    Device device) {
  const int64_t half = d / 2;
  Tables tb{Tensor::empty({t_len, half}, ad, device), Tensor::empty({t_len, half}, ad, device)};
  const unsigned int blocks = blocks_for(t_len * half);
  if (ad == DType::kF64) {
    angle_table_kernel<double><<<blocks, kThreads, 0, compute_stream()>>>(
        tb.cos.data<double>(), tb.sin.data<double>(), t_len, d, theta, offset);
  } else {
    angle_table_kernel<float><<<blocks, kThreads, 0, compute_stream()>>>(
        tb.cos.data<float>(), tb.sin.data<float>(), t_len, d, theta, offset);
  }
  KILN_CUDA_CHECK_LAUNCH();
  return tb;
}

struct TableKey {
  int device;
  int64_t t_len, d, offset;
  uint64_t theta_bits;
  DType dtype;
  bool operator==(const TableKey&) const = default;
};

// Most recently used first. Leaked (never destroyed): its tensors must not be freed after the
// allocator or the CUDA context at exit.
struct TableCache {
  std::mutex mu;
  std::list<std::pair<TableKey, Tables>> entries;
  RopeTableCacheStats stats;
};
TableCache& table_cache() {
  static TableCache* c = new TableCache();  // never destroyed
  return *c;
}

Tables tables_for(int64_t t_len, int64_t d, double theta, int64_t offset, DType ad, Device device) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  KILN_CUDA_CHECK(cudaStreamIsCapturing(compute_stream(), &capture));
  if (capture != cudaStreamCaptureStatusNone)
    return build_tables(t_len, d, theta, offset, ad, device);
  TableKey key{device.index, t_len, d, offset, 0, ad};
  std::memcpy(&key.theta_bits, &theta, sizeof(theta));
  TableCache& c = table_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
    if (it->first == key) {
      c.entries.splice(c.entries.begin(), c.entries, it);
      ++c.stats.hits;
      return c.entries.front().second;
    }
  }
  c.entries.emplace_front(key, build_tables(t_len, d, theta, offset, ad, device));
  ++c.stats.builds;
  if (c.entries.size() > static_cast<size_t>(kRopeTableCacheSize)) c.entries.pop_back();
  return c.entries.front().second;
}

// ---- launchers ----

RopeImpl env_impl() {
  static const RopeImpl impl = [] {
    const char* e = std::getenv("KILN_ROPE");
    const std::string v = e == nullptr ? "" : e;
    KILN_CHECK(v.empty() || v == "v1" || v == "v2")
        << kOp << ": KILN_ROPE must be v1 or v2, got '" << v << "'";
    return v == "v1" ? RopeImpl::kV1 : RopeImpl::kV2;
  }();
  return impl;
}

uint64_t addr(const Tensor& t) { return reinterpret_cast<uint64_t>(t.raw()); }

template <typename T>
void launch_v1_kernel(const Tensor& x, const Tensor& out, const Tables& tb, const Dims& s,
                      bool inverse) {
  using A = acc_t<T>;
  rope_kernel<T><<<blocks_for(x.numel() / 2), kThreads, 0, compute_stream()>>>(
      x.data<T>(), out.data<T>(), tb.cos.data<A>(), tb.sin.data<A>(), s, inverse ? A(-1) : A(1));
  KILN_CUDA_CHECK_LAUNCH();
}

template <typename T, int kV>
void launch_vec(const Tensor& x, const Tensor& out, const Tables& tb, const rope_index::Map& m,
                acc_t<T> sign) {
  using A = acc_t<T>;
  if constexpr (kV * sizeof(T) <= 16) {
    constexpr uint32_t kMaxH = rope_index::kMaxHeadsPerUnit;
    if (m.hp == 1) {
      rope_kernel_vec<T, kV, 1><<<blocks_for(m.units), kThreads, 0, compute_stream()>>>(
          x.data<T>(), out.data<T>(), tb.cos.data<A>(), tb.sin.data<A>(), m, sign);
    } else {
      KILN_CHECK(m.hp <= kMaxH) << kOp << ": " << m.hp << " heads a thread";
      rope_kernel_vec<T, kV, kMaxH><<<blocks_for(m.units), kThreads, 0, compute_stream()>>>(
          x.data<T>(), out.data<T>(), tb.cos.data<A>(), tb.sin.data<A>(), m, sign);
    }
    KILN_CUDA_CHECK_LAUNCH();
  } else {
    KILN_CHECK(false) << kOp << ": no " << kV << "-wide kernel for " << x.str();
  }
}

template <typename T>
void launch_v2(const Tensor& x, const Tensor& out, const Tables& tb, const Dims& s, bool inverse) {
  using A = acc_t<T>;
  const A sign = inverse ? A(-1) : A(1);
  const int64_t size[4] = {s.b, s.h, s.t, s.d}, stride[4] = {s.sb, s.sh, s.st, s.sd};
  const int64_t ostride[3] = {s.ob, s.oh, s.ot};
  // Both tables' addresses OR-ed: aligned to a power of two only when both are.
  const int vec = rope_index::vec_width(size, stride, ostride, addr(x), addr(out), sizeof(T),
                                        addr(tb.cos) | addr(tb.sin), sizeof(A), 16 / sizeof(T));
  const std::optional<rope_index::Map> m = rope_index::make_map(size, stride, vec, ostride);
  if (!m) {
    g_last_path = RopePath::kScalar64;
    launch_v1_kernel<T>(x, out, tb, s, inverse);
    return;
  }
  if (vec == 1) {
    g_last_path = RopePath::kScalar32;
    rope_kernel_scalar32<T><<<blocks_for(m->units), kThreads, 0, compute_stream()>>>(
        x.data<T>(), out.data<T>(), tb.cos.data<A>(), tb.sin.data<A>(), *m, sign);
    KILN_CUDA_CHECK_LAUNCH();
    return;
  }
  g_last_path = RopePath::kVector;
  g_last_vec = vec;
  if (vec == 2) {
    launch_vec<T, 2>(x, out, tb, *m, sign);
  } else if (vec == 4) {
    launch_vec<T, 4>(x, out, tb, *m, sign);
  } else {
    KILN_CHECK(vec == 8) << kOp << ": unexpected vector width " << vec;
    launch_vec<T, 8>(x, out, tb, *m, sign);
  }
}

}  // namespace

RopePath last_rope_path() { return g_last_path; }
int last_rope_vec() { return g_last_vec; }

RopeTableCacheStats rope_table_cache_stats() {
  TableCache& c = table_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  RopeTableCacheStats s = c.stats;
  s.entries = static_cast<int64_t>(c.entries.size());
  return s;
}

void clear_rope_table_cache() {
  TableCache& c = table_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.entries.clear();
  c.stats = RopeTableCacheStats{};
}

void rope_into(const Tensor& x, const Tensor& out, double theta, int64_t offset, bool inverse,
               RopeImpl impl) {
  check_on_current_device(kOp, "x", x);
  check_on_current_device(kOp, "out", out);
  KILN_CHECK(out.shape() == x.shape() && out.dtype() == x.dtype() && out.strides()[3] == 1)
      << kOp << ": internal: result " << out.str() << " for x " << x.str()
      << " (same shape and dtype, D innermost)";
  if (impl == RopeImpl::kEnv) impl = env_impl();
  const Dims s{x.size(0),        x.size(1),        x.size(2),       x.size(3),
               x.strides()[0],   x.strides()[1],   x.strides()[2],  x.strides()[3],
               out.strides()[0], out.strides()[1], out.strides()[2]};
  if (x.numel() == 0 || s.d / 2 == 0) return;
  const DType ad = x.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  const Tables tb = impl == RopeImpl::kV1 ? build_tables(s.t, s.d, theta, offset, ad, x.device())
                                          : tables_for(s.t, s.d, theta, offset, ad, x.device());
  KILN_CUDA_DISPATCH_FLOAT(x.dtype(), kOp, T, {
    if (impl == RopeImpl::kV1) {
      g_last_path = RopePath::kV1;
      launch_v1_kernel<T>(x, out, tb, s, inverse);
    } else {
      launch_v2<T>(x, out, tb, s, inverse);
    }
  });
}

Tensor rope_forward(const Tensor& x, double theta, int64_t offset, bool inverse, RopeImpl impl) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  rope_into(x, out, theta, offset, inverse, impl);
  return out;
}

}  // namespace kiln::cuda
