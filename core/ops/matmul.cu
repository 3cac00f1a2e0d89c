// CUDA matmul / linear through cuBLASLt (core/cuda/gemm.h): operands are passed with their strides
// and transposes as layout flags (a transposed view is never copied), batches as strided batched
// GEMMs (or folded into M), bias / bias+GELU fused into the forward epilogue, the bias gradient
// into the weight-gradient GEMM and the GELU gradient (+ its bias gradient) into the GEMM that
// produces the hidden gradient. Unfused fallbacks run where cuBLASLt offers no fused algorithm;
// fp32/f64 GELU always runs the exact kiln kernel below (cuBLASLt's epilogue GELU is only used for
// bf16/f16, whose rounding hides its approximation error).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "core/cuda/dtype.cuh"
#include "core/cuda/gemm.h"
#include "core/cuda/runtime.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/sum_chunks.cuh"

namespace kiln::cuda {
namespace {

constexpr int kThreads = 256;

// A matrix operand (..., R, C) as cuBLASLt sees it: a base pointer, the row stride of the stored
// matrix, the stride between batch entries, and whether it is stored transposed (C x R).
struct Operand {
  Tensor keep;  // owns the storage (a contiguous copy when the view had no matrix layout)
  const char* base = nullptr;
  int64_t ld = 0, batch_stride = 0;
  bool trans = false;
};

// Whether the leading (batch) dims of t walk memory with one stride; sets *stride.
bool uniform_batch(const Tensor& t, int64_t* stride) {
  *stride = 0;
  int64_t inner_size = -1, inner_stride = 0;
  for (int64_t d = t.dim() - 3; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (inner_size < 0) {
      *stride = t.strides()[d];
    } else if (t.strides()[d] != inner_stride * inner_size) {
      return false;
    }
    inner_size = t.size(d);
    inner_stride = t.strides()[d];
  }
  return true;
}

Operand operand(const Tensor& t) {
  Operand o;
  const int64_t r = t.size(-2), c = t.size(-1);
  const int64_t s2 = t.strides()[t.dim() - 2], s1 = t.strides()[t.dim() - 1];
  int64_t bs = 0;
  if (uniform_batch(t, &bs)) {
    if ((c == 1 || s1 == 1) && (r == 1 || s2 >= std::max<int64_t>(c, 1))) {
      o.keep = t;
      o.ld = r == 1 ? std::max<int64_t>(c, 1) : s2;
      o.trans = false;
    } else if ((r == 1 || s2 == 1) && (c == 1 || s1 >= r)) {
      o.keep = t;
      o.ld = c == 1 ? std::max<int64_t>(r, 1) : s1;
      o.trans = true;
    }
  }
  if (!o.keep.defined()) {
    o.keep = raw::contiguous(t);
    o.ld = std::max<int64_t>(c, 1);
    o.trans = false;
    bs = r * c;
  }
  o.base = static_cast<const char*>(o.keep.raw());
  o.batch_stride = bs;
  return o;
}

// Runs p into out, or writes zeros (and zero bias grads) when the reduction dim is empty.
void run_gemm(GemmParams p, const Tensor& out, const Tensor& bias_grad = Tensor()) {
  if (out.numel() == 0) return;
  if (p.k == 0) {
    raw::fill(out, 0.0);
    if (bias_grad.defined()) raw::fill(bias_grad, 0.0);
    return;
  }
  KILN_CHECK(gemm(p)) << "internal: plain GEMM returned without running";
}

GemmParams params(DType dt, int64_t m, int64_t n, int64_t k, const Operand& a, bool ta,
                  const Operand& b, bool tb, const Tensor& d) {
  GemmParams p;
  p.ab_dtype = p.d_dtype = dt;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a.base;
  p.lda = a.ld;
  p.trans_a = ta != a.trans;
  p.b = b.base;
  p.ldb = b.ld;
  p.trans_b = tb != b.trans;
  p.d = d.raw();
  p.ldd = n;
  return p;
}

constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2 / pi), as activation.cc
constexpr double kGeluCoef = 0.044715;

__device__ __forceinline__ float tanh_c(float v) { return tanhf(v); }
__device__ __forceinline__ double tanh_c(double v) { return tanh(v); }

// The CPU reference formulas of core/ops/activation.cc, in the compute type C.
template <typename C>
__device__ __forceinline__ C gelu_f(C x) {
  const C t = tanh_c(C(kSqrt2OverPi) * (x + C(kGeluCoef) * x * x * x));
  return C(0.5) * x * (C(1) + t);
}
template <typename C>
__device__ __forceinline__ C gelu_grad(C x) {
  const C t = tanh_c(C(kSqrt2OverPi) * (x + C(kGeluCoef) * x * x * x));
  const C dinner = C(kSqrt2OverPi) * (C(1) + C(3 * kGeluCoef) * x * x);
  return C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * dinner;
}

template <typename S>
__global__ void gelu_kernel(const S* __restrict__ x, S* __restrict__ y, int64_t n) {
  using C = typename Elem<S>::C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    Elem<S>::store(y, i, gelu_f<C>(Elem<S>::load(x, i)));
}

template <typename S>
__global__ void gelu_backward_kernel(const S* __restrict__ g, const S* __restrict__ x,
                                     S* __restrict__ out, int64_t n) {
  using C = typename Elem<S>::C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    Elem<S>::store(out, i, Elem<S>::load(g, i) * gelu_grad<C>(Elem<S>::load(x, i)));
}

// dh := dh * gelu'(pre) in place and, when partial is non-null, the column sums of the new dh over
// each chunk of rows_per_chunk rows into partial[chunk][col] (f32). 16-bit storage only, hid a
// multiple of 8 and both pointers 16-byte aligned: 8 elements per access. Block (32, 8): thread x
// owns 8 consecutive columns of the block's 256, thread y every 8th row of the chunk; grid
// (ceil(hid / 256), chunks).
template <typename S>
__global__ void dgelu_bgrad_kernel(S* __restrict__ dh, const S* __restrict__ pre,
                                   float* __restrict__ partial, int64_t rows, int64_t hid,
                                   int64_t rows_per_chunk) {
  __shared__ float red[8][256 + 4];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x * 8;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (col < hid) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      uint4* gp = reinterpret_cast<uint4*>(dh + r * hid + col);
      uint4 g = *gp;
      const uint4 x = *reinterpret_cast<const uint4*>(pre + r * hid + col);
      const S* gs = reinterpret_cast<const S*>(&g);
      const S* xs = reinterpret_cast<const S*>(&x);
      uint4 o;
      S* os = reinterpret_cast<S*>(&o);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        Elem<S>::store(os, e, Elem<S>::load(gs, e) * gelu_grad<float>(Elem<S>::load(xs, e)));
        acc[e] += Elem<S>::load(os, e);  // the sum of the values as stored
      }
      *gp = o;
    }
  }
  if (partial == nullptr) return;
#pragma unroll
  for (int e = 0; e < 8; ++e) red[threadIdx.y][threadIdx.x * 8 + e] = acc[e];
  __syncthreads();
  const int c = threadIdx.y * 32 + threadIdx.x;
  const int64_t out_col = static_cast<int64_t>(blockIdx.x) * 256 + c;
  if (out_col < hid) {
    float s = 0;
#pragma unroll
    for (int y = 0; y < 8; ++y) s += red[y][c];
    partial[blockIdx.y * hid + out_col] = s;
  }
}

Tensor gelu_exact(const Tensor& x) {
  Tensor xc = raw::contiguous(x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = y.numel();
  if (n == 0) return y;
  KILN_CUDA_DISPATCH_STORAGE(x.dtype(), S, {
    gelu_kernel<S><<<blocks_for(n, kThreads), kThreads, 0, compute_stream()>>>(
        static_cast<const S*>(xc.raw()), static_cast<S*>(y.raw()), n);
    KILN_CUDA_CHECK_LAUNCH();
  });
  return y;
}

bool fused_gelu_dtype(DType t) { return t == DType::kBF16 || t == DType::kF16; }

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  DeviceGuard guard(device_of(a));
  const int64_t m = trans_a ? a.size(-1) : a.size(-2), k = trans_a ? a.size(-2) : a.size(-1);
  const int64_t n = trans_b ? b.size(-2) : b.size(-1);
  Shape out_shape(a.shape().begin(), a.shape().end() - 2);
  const int64_t batch = shape_numel(out_shape);
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  Operand A = operand(a), B = operand(b);
  GemmParams p = params(a.dtype(), m, n, k, A, trans_a, B, trans_b, out);
  const size_t es = dtype_size(a.dtype());
  if (b.dim() > 2) {  // strided batched
    p.batch = batch;
    p.stride_a = A.batch_stride;
    p.stride_b = B.batch_stride;
    p.stride_d = m * n;
    run_gemm(p, out);
    return out;
  }
  if (!p.trans_a && (batch == 1 || A.batch_stride == m * A.ld)) {  // fold the batch into M
    p.m = batch * m;
    run_gemm(p, out);
    return out;
  }
  for (int64_t i = 0; i < batch; ++i) {  // b shared, a's batches not row-contiguous
    p.a = A.base + i * A.batch_stride * static_cast<int64_t>(es);
    p.d = static_cast<char*>(out.raw()) + i * m * n * static_cast<int64_t>(es);
    Tensor oi = out.detach().reshape({batch, m, n}).narrow(0, i, 1);
    run_gemm(p, oi);
  }
  return out;
}

namespace {

// x2 w^T + b + residual with the residual as cuBLASLt's separate C (beta = 1): the add costs no
// pass of its own. False (nothing written) when cuBLASLt offers no such algorithm.
bool linear_residual_epilogue(const Tensor& x2, const Tensor& w, const Tensor& bc,
                              const Tensor& residual, const Tensor& out) {
  const int64_t rows = x2.size(0), in = x2.size(1), out_f = w.size(0);
  if (in == 0 || residual.dtype() != x2.dtype()) return false;
  Tensor rc = raw::contiguous(residual);
  Operand X = operand(x2), W = operand(w);
  GemmParams p = params(x2.dtype(), rows, out_f, in, X, false, W, true, out);
  p.c = rc.raw();
  p.ldc = out_f;
  p.beta = 1.0;
  if (bc.defined()) {
    p.epilogue = GemmEpilogue::kBias;
    p.bias = bc.raw();
  }
  return gemm(p);
}

}  // namespace

Tensor linear_forward(const Tensor& x2, const Tensor& w, const Tensor& b, const Tensor& residual) {
  DeviceGuard guard(device_of(x2));
  const int64_t rows = x2.size(0), in = x2.size(1), out_f = w.size(0);
  Tensor out = Tensor::empty({rows, out_f}, x2.dtype(), x2.device());
  if (out.numel() == 0) return out;
  Tensor bc = b.defined() ? raw::contiguous(b) : Tensor();
  if (residual.defined()) {
    if (linear_residual_epilogue(x2, w, bc, residual, out)) return out;
    return binary(BinaryOp::kAdd, linear_forward(x2, w, b), residual);  // unfused fallback
  }
  Operand X = operand(x2), W = operand(w);
  GemmParams p = params(x2.dtype(), rows, out_f, in, X, false, W, true, out);
  if (bc.defined() && in > 0) {
    p.epilogue = GemmEpilogue::kBias;
    p.bias = bc.raw();
    if (gemm(p)) return out;
    p.epilogue = GemmEpilogue::kNone;  // no fused algorithm: bias added separately
    p.bias = nullptr;
  }
  run_gemm(p, out);
  if (bc.defined()) return binary(BinaryOp::kAdd, out, bc);
  return out;
}

Tensor linear_gelu_forward(const Tensor& x2, const Tensor& w, const Tensor& b, Tensor* pre) {
  DeviceGuard guard(device_of(x2));
  const int64_t rows = x2.size(0), in = x2.size(1), out_f = w.size(0);
  if (fused_gelu_dtype(x2.dtype()) && out_f % 8 == 0 && rows > 0 && in > 0 && out_f > 0) {
    Tensor h = Tensor::empty({rows, out_f}, x2.dtype(), x2.device());
    Tensor aux = Tensor::empty({rows, out_f}, x2.dtype(), x2.device());
    Tensor bc = b.defined() ? raw::contiguous(b) : Tensor();
    Operand X = operand(x2), W = operand(w);
    GemmParams p = params(x2.dtype(), rows, out_f, in, X, false, W, true, h);
    p.epilogue = GemmEpilogue::kGeluAux;
    p.bias = bc.defined() ? bc.raw() : nullptr;
    p.aux = aux.raw();
    p.ld_aux = out_f;
    if (gemm(p)) {
      *pre = aux;
      return h;
    }
  }
  *pre = linear_forward(x2, w, b);
  return gelu_exact(*pre);
}

Tensor gelu_input_grad(const Tensor& g, const Tensor& pre) {
  DeviceGuard guard(device_of(g));
  Tensor gc = raw::contiguous(g), pc = raw::contiguous(pre);
  Tensor out = Tensor::empty(pre.shape(), pre.dtype(), pre.device());
  const int64_t n = out.numel();
  if (n == 0) return out;
  KILN_CUDA_DISPATCH_STORAGE(pre.dtype(), S, {
    gelu_backward_kernel<S><<<blocks_for(n, kThreads), kThreads, 0, compute_stream()>>>(
        static_cast<const S*>(gc.raw()), static_cast<const S*>(pc.raw()),
        static_cast<S*>(out.raw()), n);
    KILN_CUDA_CHECK_LAUNCH();
  });
  return out;
}

void linear_backward(const Tensor& gy, const Tensor& x2, const Tensor& w, bool need_x, bool need_w,
                     bool need_b, Tensor* gx, Tensor* gw, Tensor* gb, const Tensor& gw_into,
                     bool gw_overwrite, const Tensor& gb_into, bool gb_overwrite) {
  DeviceGuard guard(device_of(gy));
  const int64_t rows = x2.size(0), in = x2.size(1), out_f = w.size(0);
  const DType dt = x2.dtype();
  if (need_b && gb_into.defined()) {  // the bias gradient straight into its f32 .grad
    column_sums_into(gy, gb_into, gb_overwrite);
    need_b = false;
  }
  Operand G = operand(gy);
  if (need_x) {  // gx (rows, in) = gy (rows, out) @ w (out, in)
    *gx = Tensor::empty({rows, in}, dt, x2.device());
    Operand W = operand(w);
    run_gemm(params(dt, rows, in, out_f, G, false, W, false, *gx), *gx);
  }
  if (need_w && gw_into.defined()) {  // gw_into (f32) += gy^T @ x2 (= with gw_overwrite)
    KILN_CHECK(gw_into.dtype() == DType::kF32 && gw_into.is_contiguous() &&
               gw_into.shape() == w.shape())
        << "linear_backward: gw_into " << gw_into.str() << " for weight " << w.str();
    if (rows == 0 && gw_overwrite) Tensor(gw_into).zero_();
    if (rows > 0 && gw_into.numel() > 0) {
      Operand X = operand(x2);
      GemmParams p = params(dt, out_f, in, rows, G, true, X, false, gw_into);
      p.d_dtype = DType::kF32;
      p.d = gw_into.raw();
      p.ldd = in;
      p.beta = gw_overwrite ? 0.0 : 1.0;
      KILN_CHECK(gemm(p)) << "internal: plain GEMM returned without running";
    }
    need_w = false;
  }
  if (need_w) {  // gw (out, in) = gy^T (out, rows) @ x2 (rows, in); gb = column sums of gy
    *gw = Tensor::empty({out_f, in}, dt, x2.device());
    Operand X = operand(x2);
    GemmParams p = params(dt, out_f, in, rows, G, true, X, false, *gw);
    if (need_b && gw->numel() > 0 && rows > 0) {
      *gb = Tensor::empty({out_f}, dt, x2.device());
      p.epilogue = GemmEpilogue::kBiasGradA;
      p.bias_grad = gb->raw();
      if (gemm(p)) return;
      p.epilogue = GemmEpilogue::kNone;  // no fused algorithm: reduce separately
      p.bias_grad = nullptr;
    }
    run_gemm(p, *gw);
  }
  if (need_b) *gb = sum_to(gy, {out_f});
}

bool packed_wgrads_batched(const Tensor& gy, const Tensor& x2, const std::vector<Tensor>& into,
                           bool overwrite) {
  const int64_t n = static_cast<int64_t>(into.size());
  if (n < 2 || gy.dim() != 2 || x2.dim() != 2 || !gy.is_contiguous() || !x2.is_contiguous() ||
      gy.dtype() != x2.dtype() || (gy.dtype() != DType::kBF16 && gy.dtype() != DType::kF16) ||
      gy.size(0) != x2.size(0) || gy.size(0) == 0)
    return false;
  const int64_t r = into[0].dim() == 2 ? into[0].size(0) : -1, in = x2.size(1);
  if (r <= 0 || gy.size(1) != n * r || (r * 2) % 16 != 0) return false;  // A's stride: 16 bytes
  int64_t stride = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& t = into[i];
    if (t.dtype() != DType::kF32 || !t.is_contiguous() || t.dim() != 2 || t.size(0) != r ||
        t.size(1) != in || t.device() != gy.device() || !t.aligned_to(16))
      return false;
    if (i == 0) continue;
    const int64_t d =
        static_cast<const float*>(t.raw()) - static_cast<const float*>(into[i - 1].raw());
    if (i == 1) stride = d;
    if (d != stride) return false;
  }
  if (stride < r * in || stride % 4 != 0) return false;  // positive, no overlap, 16-byte steps
  DeviceGuard guard(device_of(gy));
  const Operand G = operand(gy), X = operand(x2);
  GemmParams p = params(gy.dtype(), r, in, gy.size(0), G, true, X, false, into[0]);
  p.d_dtype = DType::kF32;
  p.ldd = in;
  p.batch = n;
  p.stride_a = r;  // piece i's block of gy starts i R columns in
  p.stride_b = 0;
  p.stride_d = stride;
  p.beta = overwrite ? 0.0 : 1.0;
  return gemm(p);
}

// dpre (rows, hid) := dpre * gelu'(pre) in place; *gb1 = its column sums (pre contiguous, 16-bit,
// hid % 8 == 0, both 16-byte aligned: the caller checks).
void dgelu_bgrad_inplace(const Tensor& dpre, const Tensor& pre, Tensor* gb1) {
  DeviceGuard guard(device_of(dpre));
  const int64_t rows = dpre.size(0), hid = dpre.size(1);
  const int64_t chunks = std::min<int64_t>(64, std::max<int64_t>(1, rows / 8));
  const int64_t per = (rows + chunks - 1) / chunks;
  Tensor partial = gb1 ? Tensor::empty({chunks, hid}, DType::kF32, dpre.device()) : Tensor();
  if (gb1) *gb1 = Tensor::empty({hid}, dpre.dtype(), dpre.device());
  const dim3 grid(static_cast<unsigned>((hid + 255) / 256), static_cast<unsigned>(chunks));
  auto run = [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dgelu_bgrad_kernel<S><<<grid, dim3(32, 8), 0, compute_stream()>>>(
        static_cast<S*>(dpre.raw()), static_cast<const S*>(pre.raw()),
        gb1 ? static_cast<float*>(partial.raw()) : nullptr, rows, hid, per);
    KILN_CUDA_CHECK_LAUNCH();
    if (gb1) {
      sum_chunks_kernel<S><<<blocks_for(hid, kThreads), kThreads, 0, compute_stream()>>>(
          static_cast<const float*>(partial.raw()), static_cast<S*>(gb1->raw()), chunks, hid);
      KILN_CUDA_CHECK_LAUNCH();
    }
  };
  if (dpre.dtype() == DType::kBF16) {
    run(static_cast<__nv_bfloat16*>(nullptr));
  } else {
    KILN_CHECK(dpre.dtype() == DType::kF16) << "dgelu_bgrad: 16-bit dtypes only";
    run(static_cast<__half*>(nullptr));
  }
}

DGeluPath default_dgelu_path() {
  static const DGeluPath path = [] {
    const char* e = std::getenv("KILN_DGELU");
    const std::string v = e != nullptr ? e : "";
    if (v == "kernel") return DGeluPath::kKernel;
    if (v == "cublaslt") return DGeluPath::kEpilogueBGrad;
    return DGeluPath::kEpilogue;
  }();
  return path;
}

Tensor matmul_dgelu(const Tensor& gy, const Tensor& w2, const Tensor& pre, Tensor* gb1,
                    DGeluPath path) {
  DeviceGuard guard(device_of(gy));
  const int64_t rows = gy.size(0), c = gy.size(1), hid = w2.size(1);
  Tensor pc = raw::contiguous(pre);
  const bool fusable = fused_gelu_dtype(gy.dtype()) && hid % 8 == 0 && rows > 0 && c > 0 && hid > 0;
  // kEpilogue (the default): the GELU factor in the GEMM's epilogue, b1's gradient by sum_to:
  // 0.40-0.42 ms for 32768 x 768 x 3072 on an H100, against 0.49 ms for kKernel (a plain GEMM,
  // then one kiln kernel for the factor and b1's partial column sums) and 0.91 ms for
  // DGELU_BGRAD, whose bias gradient runs as a separate epilogue kernel (kernel_bench dgelu,
  // 2026-12-06, benchmarks/RESULTS.md).
  if (path == DGeluPath::kKernel && fusable) {
    Tensor dpre = matmul(gy, w2, false, false);
    if (dpre.is_contiguous() && dpre.aligned_to(16) && pc.aligned_to(16)) {
      dgelu_bgrad_inplace(dpre, pc, gb1);
      return dpre;
    }
  }
  if (fusable) {
    const bool bgrad = gb1 != nullptr && path == DGeluPath::kEpilogueBGrad;
    Tensor dpre = Tensor::empty({rows, hid}, gy.dtype(), gy.device());
    Tensor bg = bgrad ? Tensor::empty({hid}, gy.dtype(), gy.device()) : Tensor();
    Operand G = operand(gy), W = operand(w2);
    GemmParams p = params(gy.dtype(), rows, hid, c, G, false, W, false, dpre);
    p.epilogue = bgrad ? GemmEpilogue::kDGeluBGrad : GemmEpilogue::kDGelu;
    p.aux = const_cast<void*>(pc.raw());
    p.ld_aux = hid;
    p.bias_grad = bg.defined() ? bg.raw() : nullptr;
    if (gemm(p)) {
      if (gb1) *gb1 = bgrad ? bg : sum_to(dpre, {hid});
      return dpre;
    }
  }
  Tensor dpre = gelu_input_grad(matmul(gy, w2, false, false), pc);
  if (gb1) *gb1 = sum_to(dpre, {hid});
  return dpre;
}

Tensor linear_fp8(const Tensor& x, const Tensor& w, double x_scale, double w_scale, DType out_dtype,
                  const Tensor& b) {
  DeviceGuard guard(device_of(x));
  KILN_CHECK(compute_capability() >= 89)
      << "linear_fp8: fp8 GEMMs need compute capability 8.9 or newer (Ada / Hopper); this GPU "
         "is "
      << compute_capability() / 10 << "." << compute_capability() % 10;
  const int64_t rows = x.size(0), k = x.size(1), n = w.size(0);
  KILN_CHECK(k % 16 == 0 && n % 16 == 0)
      << "linear_fp8: K and N must be multiples of 16 for fp8 cuBLASLt kernels, got K=" << k
      << " N=" << n;
  Tensor out = Tensor::empty({rows, n}, out_dtype, x.device());
  if (out.numel() == 0) return out;
  Tensor xc = raw::contiguous(x), wc = raw::contiguous(w);
  Tensor xs = Tensor::full({}, x_scale, DType::kF32, x.device());
  Tensor ws = Tensor::full({}, w_scale, DType::kF32, x.device());
  GemmParams p;
  p.ab_dtype = x.dtype();
  p.d_dtype = out_dtype;
  p.m = rows;
  p.n = n;
  p.k = k;
  p.a = xc.raw();
  p.lda = k;
  p.b = wc.raw();
  p.ldb = k;
  p.trans_b = true;  // y = x w^T: cuBLASLt's "TN" layout, the one fp8 requires
  p.d = out.raw();
  p.ldd = n;
  p.a_scale = xs.data<float>();
  p.b_scale = ws.data<float>();
  Tensor bc = b.defined() ? raw::convert(b, out_dtype) : Tensor();
  if (bc.defined() && out_dtype == DType::kBF16) {
    p.epilogue = GemmEpilogue::kBias;
    p.bias = bc.raw();
    if (gemm(p)) return out;
    p.epilogue = GemmEpilogue::kNone;
    p.bias = nullptr;
  }
  KILN_CHECK(gemm(p)) << "linear_fp8: cuBLASLt offers no fp8 algorithm for " << x.str() << " @ "
                      << w.str() << "^T -> " << out_dtype;
  if (bc.defined()) return binary(BinaryOp::kAdd, out, bc);
  return out;
}

}  // namespace kiln::cuda
