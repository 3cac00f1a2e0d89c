// Multi-tensor CUDA kernels for the optimizers: tensors are cut into fixed 64Ki-element chunks and
// each block handles one chunk of one tensor, with the tensor pointers and each tensor's first
// block passed as kernel arguments (no host-to-device copies), so AdamW over all parameters is one
// launch per 48 tensors, as many blocks as their chunks.
// The chunk layout depends only on the tensor sizes, which makes the sum of squares (per-chunk
// f64 partials added in chunk order) bit-identical across runs.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>

#include "core/check.h"
#include "core/cuda/dtype.cuh"
#include "core/cuda/runtime.h"
#include "core/env_switch.h"
#include "core/ops/cuda_base_ops.h"
#include "optim/optimizer_cuda.h"

namespace kiln::optim::cuda {
namespace {

using kiln::cuda::compute_stream;
using kiln::cuda::DeviceGuard;

constexpr int kMaxTensors = 48;    // tensors per launch
constexpr int64_t kChunk = 65536;  // elements per chunk
constexpr int kThreads = 512;

__device__ __forceinline__ float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return kiln::cuda::bf16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16:
      return kiln::cuda::f16_bits_to_f32(static_cast<const uint16_t*>(p)[i]);
    default:
      return static_cast<float>(static_cast<const double*>(p)[i]);
  }
}

// The chunk table shared by every multi-tensor launch: slot t's blocks are [first_block[t],
// first_block[t + 1]), and they take its chunks from first_chunk[t] on (non-zero only for a tensor
// continued from the previous launch under a block cap).
struct ChunkTable {
  int64_t n[kMaxTensors];
  int64_t first_chunk[kMaxTensors];
  int32_t first_block[kMaxTensors + 1];
  int32_t slots;
};

struct ChunkRange {
  int t;               // the slot
  int64_t start, end;  // elements [start, end) of that tensor
};

// This block's slot (a binary search over first_block: the same for every thread) and elements.
__device__ __forceinline__ ChunkRange chunk_of(const ChunkTable& tb) {
  const int b = static_cast<int>(blockIdx.x);
  int lo = 0, hi = tb.slots - 1;  // the last slot whose first block is <= b
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tb.first_block[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t start = (tb.first_chunk[lo] + (b - tb.first_block[lo])) * kChunk;
  return {lo, start, min(tb.n[lo], start + kChunk)};
}

struct AdamWArgs {
  float* p[kMaxTensors];
  const void* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  float keep[kMaxTensors];    // 1 - lr * decay
  float gscale[kMaxTensors];  // the gradient's factor (1: none)
  uint16_t* h[kMaxTensors];   // the 16-bit copy of the updated p, or null (AdamWSlot::h)
  DType gtype[kMaxTensors];
  bool hbf16[kMaxTensors];  // h is bf16 (else f16)
  bool vec[kMaxTensors];    // p, m, v 16-byte aligned, g aligned to 4 of its elements, h to 8 bytes
  ChunkTable table;
};
// Kernel arguments stay within the classic 4 KiB limit.
static_assert(sizeof(AdamWArgs) <= 4096, "AdamWArgs too large");

struct AdamWScalars {
  float b1, b2, one_minus_b1, one_minus_b2, c1, c2, lr, eps;
  bool zero_grads;  // AdamWLaunch::zero_grads: every gradient is f32 and set to 0 once read
};

// One element's update: mirrors adamw_update (optim/optimizer.cc) operation by operation, each
// rounded once.
__device__ __forceinline__ void adamw_one(float& p, float& m, float& v, float g, float keep,
                                          float gscale, const AdamWScalars& s) {
  if (gscale != 1.0f) g = __fmul_rn(g, gscale);  // as scale()'s in-place f32 multiply
  m = __fadd_rn(__fmul_rn(s.b1, m), __fmul_rn(s.one_minus_b1, g));
  v = __fadd_rn(__fmul_rn(s.b2, v), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
  const float mh = __fmul_rn(m, s.c1), vh = __fmul_rn(v, s.c2);
  const float step = __fdiv_rn(__fmul_rn(s.lr, mh), __fadd_rn(__fsqrt_rn(vh), s.eps));
  p = __fsub_rn(__fmul_rn(p, keep), step);
}

// The updated parameter rounded to the copy's dtype, as multi_cast rounds (nearest even).
__device__ __forceinline__ uint16_t to_16bit(float p, bool bf16) {
  return bf16 ? kiln::cuda::f32_to_bf16_bits(p) : kiln::cuda::f32_to_f16_bits(p);
}

// Four gradient elements from i (aligned to four of them) as f32.
__device__ __forceinline__ float4 load4_f32(const void* g, DType t, int64_t i) {
  if (t == DType::kF32) return *reinterpret_cast<const float4*>(static_cast<const float*>(g) + i);
  if (t == DType::kBF16 || t == DType::kF16) {
    const uint2 w = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(g) + i);
    const uint16_t h[4] = {static_cast<uint16_t>(w.x), static_cast<uint16_t>(w.x >> 16),
                           static_cast<uint16_t>(w.y), static_cast<uint16_t>(w.y >> 16)};
    float f[4];
    for (int j = 0; j < 4; ++j)
      f[j] = t == DType::kBF16 ? kiln::cuda::bf16_bits_to_f32(h[j])
                               : kiln::cuda::f16_bits_to_f32(h[j]);
    return make_float4(f[0], f[1], f[2], f[3]);
  }
  return make_float4(load_f32(g, t, i), load_f32(g, t, i + 1), load_f32(g, t, i + 2),
                     load_f32(g, t, i + 3));
}

// One chunk per block. With a.vec[t] (KILN_ADAMW_VEC), each thread takes four consecutive
// elements per 16-byte access of p, m, v (the same per-element arithmetic, so the same bits), and
// the chunk's last n % 4 elements one at a time. With a.h[t], each updated p is also written
// rounded to 16 bits into h (8 bytes per four elements in the vectorized loop).
__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWArgs a, AdamWScalars s) {
  const ChunkRange r = chunk_of(a.table);
  const int t = r.t;
  const int64_t start = r.start, end = r.end;
  float* __restrict__ p = a.p[t];
  float* __restrict__ m = a.m[t];
  float* __restrict__ v = a.v[t];
  uint16_t* __restrict__ h = a.h[t];
  const bool hb = a.hbf16[t];
  const void* g = a.g[t];
  float* gz = s.zero_grads ? static_cast<float*>(const_cast<void*>(g)) : nullptr;  // f32 then
  const DType gt = a.gtype[t];
  const float keep = a.keep[t], gscale = a.gscale[t];
  int64_t done = start;
  if (a.vec[t]) {
    const int64_t n4 = (end - start) / 4;
    for (int64_t j = threadIdx.x; j < n4; j += kThreads) {
      const int64_t i = start + 4 * j;
      float4 pv = *reinterpret_cast<float4*>(p + i);
      float4 mv = *reinterpret_cast<float4*>(m + i);
      float4 vv = *reinterpret_cast<float4*>(v + i);
      const float4 gv = load4_f32(g, gt, i);
      if (gz != nullptr) *reinterpret_cast<float4*>(gz + i) = make_float4(0.f, 0.f, 0.f, 0.f);
      adamw_one(pv.x, mv.x, vv.x, gv.x, keep, gscale, s);
      adamw_one(pv.y, mv.y, vv.y, gv.y, keep, gscale, s);
      adamw_one(pv.z, mv.z, vv.z, gv.z, keep, gscale, s);
      adamw_one(pv.w, mv.w, vv.w, gv.w, keep, gscale, s);
      *reinterpret_cast<float4*>(p + i) = pv;
      *reinterpret_cast<float4*>(m + i) = mv;
      *reinterpret_cast<float4*>(v + i) = vv;
      if (h != nullptr) {
        const ushort4 o = make_ushort4(to_16bit(pv.x, hb), to_16bit(pv.y, hb), to_16bit(pv.z, hb),
                                       to_16bit(pv.w, hb));
        *reinterpret_cast<ushort4*>(h + i) = o;
      }
    }
    done = start + 4 * n4;
  }
  for (int64_t i = done + threadIdx.x; i < end; i += kThreads) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw_one(pi, mi, vi, load_f32(g, gt, i), keep, gscale, s);
    if (gz != nullptr) gz[i] = 0.f;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi;
    if (h != nullptr) h[i] = to_16bit(pi, hb);
  }
}

struct SumSqArgs {
  const void* x[kMaxTensors];
  DType xtype[kMaxTensors];
  ChunkTable table;
  int64_t block_offset;  // index of this launch's first chunk among all chunks
};
static_assert(sizeof(SumSqArgs) <= 4096, "SumSqArgs too large");

__global__ void __launch_bounds__(kThreads)
    sumsq_kernel(SumSqArgs a, double* __restrict__ partial) {
  __shared__ double warp_sums[kThreads / 32];
  const ChunkRange r = chunk_of(a.table);
  const int t = r.t;
  const int64_t start = r.start, end = r.end;
  double acc = 0;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const double x = kiln::cuda::load_as_double(a.x[t], a.xtype[t], i);
    acc += x * x;
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partial[a.block_offset + blockIdx.x] = total;
  }
}

struct ScaleArgs {
  void* x[kMaxTensors];
  DType xtype[kMaxTensors];
  ChunkTable table;
};
static_assert(sizeof(ScaleArgs) <= 4096, "ScaleArgs too large");

__global__ void __launch_bounds__(kThreads) scale_kernel(ScaleArgs a, double s) {
  const ChunkRange r = chunk_of(a.table);
  const int t = r.t;
  const int64_t start = r.start, end = r.end;
  void* x = a.x[t];
  const DType xt = a.xtype[t];
  if (xt == DType::kF32) {  // as the CPU f32 fast path: one f32 multiply
    float* xf = static_cast<float*>(x);
    const float fs = static_cast<float>(s);
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) xf[i] = __fmul_rn(xf[i], fs);
    return;
  }
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads)
    kiln::cuda::store_from_double(x, xt, i, __dmul_rn(kiln::cuda::load_as_double(x, xt, i), s));
}

__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g,
                           float* __restrict__ buf, int64_t n, float lr, float mu, float wd,
                           bool nesterov) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = __fadd_rn(g[i], __fmul_rn(wd, p[i]));
    const float b = __fadd_rn(__fmul_rn(mu, buf[i]), d);
    buf[i] = b;
    const float step = mu == 0.0f ? d : nesterov ? __fadd_rn(d, __fmul_rn(mu, b)) : b;
    p[i] = __fsub_rn(p[i], __fmul_rn(lr, step));
  }
}

// Blocks a launch may hold (0: no limit): KILN_ADAMW_LAUNCH_BLOCKS, or a test's override; 320
// gives the launches of before 2026-12-06 (block counts the tables of 4 KiB arguments allowed).
std::atomic<int64_t> g_block_cap_override{-1};
int64_t launch_block_cap() {
  const int64_t forced = g_block_cap_override.load(std::memory_order_relaxed);
  if (forced >= 0) return forced;
  static const int64_t env = [] {
    const char* e = std::getenv("KILN_ADAMW_LAUNCH_BLOCKS");
    return e == nullptr ? int64_t{0} : std::max<int64_t>(0, std::atoll(e));
  }();
  return env;
}

// Walks tensors of sizes `numel` in order, packing their chunks (one block each) into launches of
// at most kMaxTensors tensors (and launch_block_cap() blocks, a tensor continuing into the next
// launch where the cap cuts it). add(slot, index) fills tensor `index` into argument slot `slot`;
// launch(table, blocks, first_block) runs one launch; first_block counts the blocks before it.
template <typename Add, typename Launch>
void for_each_launch(const std::vector<int64_t>& numel, Add add, Launch launch) {
  const int64_t cap = launch_block_cap();
  constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;
  ChunkTable table{};
  int64_t nb = 0, first_block = 0;
  auto flush = [&] {
    table.first_block[table.slots] = static_cast<int32_t>(nb);
    launch(table, static_cast<int>(nb), first_block);
    first_block += nb;
    nb = 0;
    table.slots = 0;
  };
  for (size_t i = 0; i < numel.size(); ++i) {
    const int64_t n = numel[i];
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks;) {
      const int64_t room = cap > 0 ? cap - nb : kMaxGrid - nb;
      if (table.slots == kMaxTensors || room <= 0) {
        flush();
        continue;
      }
      const int64_t take = std::min(chunks - c, room);
      add(table.slots, i);
      table.n[table.slots] = n;
      table.first_chunk[table.slots] = c;
      table.first_block[table.slots] = static_cast<int32_t>(nb);
      ++table.slots;
      nb += take;
      c += take;
    }
  }
  if (nb > 0) flush();
}

int64_t total_chunks(const std::vector<int64_t>& numel) {
  int64_t c = 0;
  for (int64_t n : numel) c += (n + kChunk - 1) / kChunk;
  return c;
}

bool float_dtype(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16 || t == DType::kF64;
}

void check_gpu_f32(const Tensor& t, const char* what, Device dev) {
  KILN_CHECK(t.dtype() == DType::kF32 && t.is_contiguous() && t.device() == dev)
      << "AdamW (CUDA): " << what << " must be a contiguous f32 tensor on " << dev << ", got "
      << t.str();
}

EnvSwitch g_adamw_vec("KILN_ADAMW_VEC", /*default_on=*/true);

}  // namespace

void set_adamw_vectorized_override(int on) { g_adamw_vec.force(on); }
void set_launch_block_cap_override(int64_t blocks) {
  g_block_cap_override.store(blocks, std::memory_order_relaxed);
}

void adamw_step(const std::vector<AdamWSlot>& slots, double lr, const AdamWOptions& o, int64_t t,
                double grad_scale, const AdamWLaunch& launch) {
  if (slots.empty()) return;
  const bool in_place = launch.stream != nullptr || launch.zero_grads;
  const Device dev = slots[0].p.device();
  DeviceGuard guard(dev.index);
  std::vector<Tensor> grads;  // f32 copies of grads that cannot be read in place, kept alive
  std::vector<int64_t> numel;
  grads.reserve(slots.size());
  for (const AdamWSlot& s : slots) {
    check_gpu_f32(s.p, "parameter", dev);
    check_gpu_f32(s.m, "exp_avg", dev);
    check_gpu_f32(s.v, "exp_avg_sq", dev);
    KILN_CHECK(s.g.numel() == s.p.numel() && s.g.device() == dev)
        << "AdamW (CUDA): gradient " << s.g.str() << " for parameter " << s.p.str();
    KILN_CHECK(!s.h.defined() ||
               ((s.h.dtype() == DType::kBF16 || s.h.dtype() == DType::kF16) &&
                s.h.is_contiguous() && s.h.numel() == s.p.numel() && s.h.device() == dev))
        << "AdamW (CUDA): 16-bit copy " << s.h.str() << " for parameter " << s.p.str();
    Tensor g = s.g;
    KILN_CHECK(!in_place || (g.dtype() == DType::kF32 && g.is_contiguous()))
        << "AdamW (CUDA): on a side stream or zeroing, gradient " << g.str()
        << " must be a contiguous f32 tensor";
    // Only f32 gradients take the factor in the kernel; others are scaled in place first, as
    // scale() would (rounded to their dtype).
    if (grad_scale != 1.0 && g.dtype() != DType::kF32) scale({g}, grad_scale);
    if (!g.is_contiguous() || !float_dtype(g.dtype())) g = raw::convert(g, DType::kF32);
    grads.push_back(g);
    numel.push_back(s.p.numel());
  }
  AdamWScalars sc;
  sc.b1 = static_cast<float>(o.beta1);
  sc.b2 = static_cast<float>(o.beta2);
  sc.one_minus_b1 = 1.0f - sc.b1;  // as the CPU: (1.0f - b1) in f32
  sc.one_minus_b2 = 1.0f - sc.b2;
  sc.c1 = static_cast<float>(1.0 / (1.0 - std::pow(o.beta1, static_cast<double>(t))));
  sc.c2 = static_cast<float>(1.0 / (1.0 - std::pow(o.beta2, static_cast<double>(t))));
  sc.lr = static_cast<float>(lr);
  sc.eps = static_cast<float>(o.eps);
  sc.zero_grads = launch.zero_grads;
  const cudaStream_t stream =
      launch.stream != nullptr ? static_cast<cudaStream_t>(launch.stream) : compute_stream();
  AdamWArgs args{};
  for_each_launch(
      numel,
      [&](int slot, size_t i) {
        const AdamWSlot& s = slots[i];
        args.p[slot] = s.p.data<float>();
        args.g[slot] = grads[i].raw();
        args.gtype[slot] = grads[i].dtype();
        args.m[slot] = s.m.data<float>();
        args.v[slot] = s.v.data<float>();
        args.keep[slot] = static_cast<float>(1.0 - lr * s.decay);
        args.gscale[slot] = s.g.dtype() == DType::kF32 ? static_cast<float>(grad_scale) : 1.0f;
        args.h[slot] = s.h.defined() ? static_cast<uint16_t*>(s.h.raw()) : nullptr;
        args.hbf16[slot] = s.h.defined() && s.h.dtype() == DType::kBF16;
        args.vec[slot] = g_adamw_vec.on() && s.p.aligned_to(16) && s.m.aligned_to(16) &&
                         s.v.aligned_to(16) &&
                         grads[i].aligned_to(4 * dtype_size(grads[i].dtype())) &&
                         (!s.h.defined() || s.h.aligned_to(8));
      },
      [&](const ChunkTable& table, int blocks, int64_t) {
        args.table = table;
        adamw_kernel<<<blocks, kThreads, 0, stream>>>(args, sc);
        KILN_CUDA_CHECK_LAUNCH();
      });
}

void sgd_step(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
              double weight_decay, bool nesterov) {
  const Device dev = p.device();
  DeviceGuard guard(dev.index);
  KILN_CHECK(p.dtype() == DType::kF32 && p.is_contiguous() && buf.dtype() == DType::kF32 &&
             buf.is_contiguous() && buf.device() == dev && g.device() == dev &&
             g.numel() == p.numel())
      << "SGD (CUDA): parameter " << p.str() << ", gradient " << g.str() << ", buffer "
      << buf.str();
  Tensor gf = raw::convert(g, DType::kF32);
  const int64_t n = p.numel();
  if (n == 0) return;
  sgd_kernel<<<kiln::cuda::blocks_for(n), 256, 0, compute_stream()>>>(
      p.data<float>(), gf.data<float>(), buf.data<float>(), n, static_cast<float>(lr),
      static_cast<float>(momentum), static_cast<float>(weight_decay), nesterov);
  KILN_CUDA_CHECK_LAUNCH();
}

double sum_squares(const std::vector<Tensor>& ts) {
  if (ts.empty()) return 0.0;
  const Device dev = ts[0].device();
  DeviceGuard guard(dev.index);
  std::vector<Tensor> xs;
  std::vector<int64_t> numel;
  for (const Tensor& t : ts) {
    KILN_CHECK(t.device() == dev) << "sum_squares: " << t.str() << " is not on " << dev;
    Tensor x = t;
    if (!x.is_contiguous() || !float_dtype(x.dtype())) x = raw::convert(x, DType::kF32);
    xs.push_back(x);
    numel.push_back(x.numel());
  }
  const int64_t chunks = total_chunks(numel);
  if (chunks == 0) return 0.0;
  Tensor partial = Tensor::empty({chunks}, DType::kF64, dev);
  SumSqArgs args{};
  for_each_launch(
      numel,
      [&](int slot, size_t i) {
        args.x[slot] = xs[i].raw();
        args.xtype[slot] = xs[i].dtype();
      },
      [&](const ChunkTable& table, int blocks, int64_t first) {
        args.table = table;
        args.block_offset = first;
        sumsq_kernel<<<blocks, kThreads, 0, compute_stream()>>>(args, partial.data<double>());
        KILN_CUDA_CHECK_LAUNCH();
      });
  // The partials, added in chunk order by the deterministic reduction; one scalar to the host.
  Tensor total = Tensor::empty({}, DType::kF64, dev);
  kiln::cuda::reduce_sum(partial, {true}, total, 1.0, false);
  return total.item();
}

void scale(const std::vector<Tensor>& ts, double s) {
  if (ts.empty()) return;
  const Device dev = ts[0].device();
  DeviceGuard guard(dev.index);
  std::vector<Tensor> xs;
  std::vector<int64_t> numel;
  for (const Tensor& t : ts) {
    KILN_CHECK(t.device() == dev) << "scale: " << t.str() << " is not on " << dev;
    if (!t.is_contiguous()) {  // strided gradients: the per-tensor in-place kernel
      kiln::cuda::mul_inplace(t, s);
      continue;
    }
    xs.push_back(t);
    numel.push_back(t.numel());
  }
  ScaleArgs args{};
  for_each_launch(
      numel,
      [&](int slot, size_t i) {
        args.x[slot] = xs[i].raw();
        args.xtype[slot] = xs[i].dtype();
      },
      [&](const ChunkTable& table, int blocks, int64_t) {
        args.table = table;
        scale_kernel<<<blocks, kThreads, 0, compute_stream()>>>(args, s);
        KILN_CUDA_CHECK_LAUNCH();
      });
}

}  // namespace kiln::optim::cuda
