// fp8 current scaling and fp8_linear: argument checks, the autograd node and its backward, and the
// dispatch to the CUDA kernels and cuBLASLt GEMMs in core/ops/fp8.cu. There is no CPU kernel: on
// the CPU (or a build without CUDA) every entry point is a kiln::Error naming the op.
#include "core/ops/fp8.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/device_dispatch.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/fp8.cu; tensors on the device of their first argument.
// Error naming `op` unless t's GPU has compute capability 8.9+.
void fp8_require_gpu(const char* op, const Tensor& t);
// x contiguous bf16 / f16 / f32, numel > 0; meta f32 (>= 1 element): meta[0] = max |x|.
void fp8_amax(const Tensor& x, const Tensor& meta);
// x2 (R, C) contiguous, meta (3) with meta[0] = amax: meta[1] = scale, meta[2] = 1 / scale,
// q (R, C) when defined, qt (C, R) when defined (fp8, one dtype).
void fp8_cast(const Tensor& x2, const Tensor& meta, const Tensor& q, const Tensor& qt);
// d (m, n) bf16 = (a_descale a (m, k)) (b_descale b (n, k))^T (+ bias (n)); false: no algorithm.
// fast_accum: cuBLASLt's fast accumulation (no periodic promotion to fp32).
bool fp8_gemm_tn(const Tensor& a, const Tensor& a_descale, const Tensor& b, const Tensor& b_descale,
                 const Tensor& bias, const Tensor& d, bool fast_accum = false);
}  // namespace kiln::cuda
#endif

namespace kiln {

double fp8_max(DType fp8_dtype) {
  KILN_CHECK(fp8_dtype == DType::kF8E4M3 || fp8_dtype == DType::kF8E5M2)
      << "fp8_max: " << fp8_dtype << " is not an fp8 dtype";
  return fp8_dtype == DType::kF8E4M3 ? 448.0 : 57344.0;
}

Tensor Fp8Tensor::amax() const { return meta.detach().narrow(0, 0, 1).reshape({}); }
Tensor Fp8Tensor::scale() const { return meta.detach().narrow(0, 1, 1).reshape({}); }
Tensor Fp8Tensor::descale() const { return meta.detach().narrow(0, 2, 1).reshape({}); }

namespace {

constexpr const char* kLinear = "fp8_linear";

// x must be a non-empty bf16 / f16 / f32 tensor on a CUDA device that can run kernels.
void check_quantize_input(const char* op, const Tensor& x) {
  check_defined(op, {&x});
  KILN_CHECK(x.dtype() == DType::kBF16 || x.dtype() == DType::kF16 || x.dtype() == DType::kF32)
      << op << ": x must be bf16, f16 or f32, got " << x.str();
  KILN_CHECK(x.numel() > 0) << op << ": x is empty: " << x.str();
  KILN_CHECK(x.device().is_cuda())
      << op << ": fp8 quantization runs on a CUDA GPU only; x is " << x.str();
  ops::on_cuda(op, "x", x);  // a CUDA tensor without a usable GPU is an error naming op
}

void check_fp8_dtype(const char* op, DType t) {
  KILN_CHECK(t == DType::kF8E4M3 || t == DType::kF8E5M2)
      << op << ": the target must be fp8e4m3 or fp8e5m2, got " << t;
}

#if KILN_WITH_CUDA
// x2 (R, C) contiguous on CUDA -> its fp8 copies (no checks).
Fp8Tensor quantize_2d(const Tensor& x2, DType fp8, bool rowwise, bool transposed) {
  Fp8Tensor r;
  const int64_t rows = x2.size(0), cols = x2.size(1);
  // {amax, scale, descale} 8 bytes into the (aligned) allocation: descale 16-byte aligned.
  r.meta = Tensor::empty({5}, DType::kF32, x2.device()).narrow(0, 2, 3);
  KILN_CHECK(reinterpret_cast<uintptr_t>(r.descale().raw()) % 16 == 0)
      << "internal: fp8 descale at " << r.descale().raw() << " is not 16-byte aligned";
  if (rowwise) r.data = Tensor::empty({rows, cols}, fp8, x2.device());
  if (transposed) r.data_t = Tensor::empty({cols, rows}, fp8, x2.device());
  cuda::fp8_amax(x2, r.meta);
  cuda::fp8_cast(x2, r.meta, r.data, r.data_t);
  return r;
}

// (..., C) as a contiguous (R, C) matrix without autograd (copies only when not contiguous).
Tensor rows_of(const Tensor& t) {
  const int64_t c = t.dim() == 0 ? 1 : t.size(-1);
  return raw::contiguous(t.detach()).reshape({-1, c});
}

// A descale cuBLASLt can read in place: quantize_2d's are 16-byte aligned; any other is copied to
// an allocation of its own (cuBLASLt reads each scale through a 16-byte-aligned pointer).
Tensor aligned_descale(const Tensor& descale) {
  if (reinterpret_cast<uintptr_t>(descale.raw()) % 16 == 0) return descale;
  return descale.clone();
}

// (a_descale a (m, k)) (b_descale b (n, k))^T (+ bias (n)) -> (m, n) bf16; the bias in the
// epilogue when cuBLASLt offers that, else added after. `forward`: the forward GEMM, which takes
// cuBLASLt's fast accumulation when KILN_FP8_FAST_ACCUM=1 (Transformer Engine's recipe: fast
// accumulation forward, the periodic fp32 promotion for the gradients).
// Returns an undefined tensor when cuBLASLt offers no algorithm (the mixed-dtype backward falls
// back then).
Tensor try_gemm_tn(const Tensor& a, const Tensor& a_descale, const Tensor& b,
                   const Tensor& b_descale, const Tensor& bias, bool forward = false) {
  Tensor d = Tensor::empty({a.size(0), b.size(0)}, DType::kBF16, a.device());
  const Tensor ad = aligned_descale(a_descale), bd = aligned_descale(b_descale);
  const bool fast = forward && fp8_fast_accum_forward();
  if (bias.defined() && cuda::fp8_gemm_tn(a, ad, b, bd, bias, d, fast)) return d;
  if (!cuda::fp8_gemm_tn(a, ad, b, bd, Tensor(), d, fast)) return Tensor();
  if (bias.defined()) return cuda::binary(cuda::BinaryOp::kAdd, d, bias);
  return d;
}

Tensor gemm_tn(const Tensor& a, const Tensor& a_descale, const Tensor& b, const Tensor& b_descale,
               const Tensor& bias, bool forward = false) {
  Tensor d = try_gemm_tn(a, a_descale, b, b_descale, bias, forward);
  KILN_CHECK(d.defined()) << kLinear << ": cuBLASLt offers no fp8 algorithm for " << a.str()
                          << " @ " << b.str() << "^T -> bf16";
  return d;
}

std::atomic<int64_t> g_e4m3_backward{0};

Tensor descale_of(const Tensor& meta) { return meta.narrow(0, 2, 1).reshape({}); }

// y = fp8_linear(x, w, b): saved = {x_t (K, M) e4m3, x meta (3), w_t (K, N) e4m3, w meta (3)};
// x_t is undefined when w needs no gradient, w_t when x needs none.
class Fp8LinearNode final : public Node {
 public:
  const char* name() const override { return "Fp8Linear"; }
  Shape x_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &x_t = saved[0], &x_meta = saved[1], &w_t = saved[2], &w_meta = saved[3];
    const bool need_x = wants(0), need_w = wants(1);
    const bool need_b = wants(2);
    Tensor gy = rows_of(raw::convert(g[0].detach(), DType::kBF16));  // (M, N)
    Tensor gx, gw, gb;
    if (need_x || need_w) {
      // dY in e5m2: its row-wise copy for dX, its transpose (N, M) for dW. Where cuBLASLt offers
      // no e5m2 x e4m3 kernel, dY goes to e4m3 instead (counted: fp8_e4m3_backward_count()).
      const Fp8Tensor gq = quantize_2d(gy, DType::kF8E5M2, need_x, need_w);
      if (need_x) gx = try_gemm_tn(gq.data, gq.descale(), w_t, descale_of(w_meta), Tensor());
      if (need_w) gw = try_gemm_tn(gq.data_t, gq.descale(), x_t, descale_of(x_meta), Tensor());
      if ((need_x && !gx.defined()) || (need_w && !gw.defined())) {
        ++g_e4m3_backward;
        const Fp8Tensor g4 = quantize_2d(gy, DType::kF8E4M3, need_x, need_w);
        if (need_x) gx = gemm_tn(g4.data, g4.descale(), w_t, descale_of(w_meta), Tensor());
        if (need_w) gw = gemm_tn(g4.data_t, g4.descale(), x_t, descale_of(x_meta), Tensor());
      }
      if (gx.defined()) gx = gx.reshape(x_shape);
    }
    if (need_b) gb = cuda::sum_to(gy, {gy.size(1)});
    return {gx, gw, gb};
  }
};
#endif

}  // namespace

namespace {
std::atomic<int> g_fast_accum_override{-1};  // tests: 1 on, 0 off, -1 none
}  // namespace

bool fp8_fast_accum_forward() {
  const int forced = g_fast_accum_override.load();
  if (forced >= 0) return forced == 1;
  static const bool on = [] {
    const char* e = std::getenv("KILN_FP8_FAST_ACCUM");
    return e != nullptr && std::strcmp(e, "1") == 0;
  }();
  return on;
}

void set_fp8_fast_accum_override(int on) { g_fast_accum_override.store(on); }

int64_t fp8_e4m3_backward_count() {
#if KILN_WITH_CUDA
  return g_e4m3_backward.load();
#else
  return 0;
#endif
}

Tensor fp8_amax(const Tensor& x) {
  check_quantize_input("fp8_amax", x);
#if KILN_WITH_CUDA
  Tensor out = Tensor::empty({1}, DType::kF32, x.device());
  cuda::fp8_amax(raw::contiguous(x.detach()), out);
  return out.reshape({});
#else
  return Tensor();
#endif
}

Fp8Tensor fp8_quantize(const Tensor& x, DType fp8_dtype, bool rowwise, bool transposed) {
  check_quantize_input("fp8_quantize", x);
  check_fp8_dtype("fp8_quantize", fp8_dtype);
  KILN_CHECK(rowwise || transposed) << "fp8_quantize: asked for neither q nor its transpose";
  KILN_CHECK(x.dim() >= 1) << "fp8_quantize: x must have at least one dim, got " << x.str();
#if KILN_WITH_CUDA
  return quantize_2d(rows_of(x), fp8_dtype, rowwise, transposed);
#else
  return Fp8Tensor();
#endif
}

bool fp8_linear_applies(const Tensor& x, const Tensor& w) {
  if (!x.defined() || !w.defined() || !x.device().is_cuda() || w.device() != x.device())
    return false;
  if (x.dtype() != DType::kBF16 || w.dtype() != DType::kBF16) return false;
  if (x.dim() < 1 || w.dim() != 2 || x.size(-1) != w.size(1)) return false;
  const int64_t k = w.size(1), n = w.size(0);
  const int64_t rows = k > 0 ? x.numel() / k : 0;
  return k > 0 && n > 0 && rows > 0 && k % 16 == 0 && n % 16 == 0 && rows % 16 == 0;
}

Tensor fp8_linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_defined(kLinear, {&x, &w});
  KILN_CHECK(x.device().is_cuda())
      << kLinear << ": fp8 GEMMs run on a CUDA GPU (compute capability 8.9+) only; x is "
      << x.str();
  check_same_device(kLinear, {&x, &w});
  KILN_CHECK(x.dtype() == DType::kBF16 && w.dtype() == DType::kBF16)
      << kLinear << ": x and w must be bf16, got " << x.str() << " and " << w.str();
  check_dim(kLinear, "w (N, K)", w, 2);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << kLinear << ": x " << x.str() << " does not match w " << w.str() << " (N, K)";
  KILN_CHECK(fp8_linear_applies(x, w))
      << kLinear << ": K, N and the row count must be positive multiples of 16 (cuBLASLt fp8), "
      << "got x " << x.str() << ", w " << w.str();
  if (b.defined()) {
    check_same_device(kLinear, {&x, &b});
    KILN_CHECK(b.dtype() == DType::kBF16 && b.dim() == 1 && b.size(0) == w.size(0))
        << kLinear << ": bias " << b.str() << " must be bf16 (N) for w " << w.str();
  }
  ops::on_cuda(kLinear, "x", x);
#if KILN_WITH_CUDA
  cuda::fp8_require_gpu(kLinear, x);
  // Recorded first: which gradients are needed decides which transposed copies the forward keeps.
  auto node = record<Fp8LinearNode>({&x, &w, &b});
  const bool need_x = node && node->next[0].fn, need_w = node && node->next[1].fn;
  const Fp8Tensor xq = quantize_2d(rows_of(x), DType::kF8E4M3, true, need_w);
  const Fp8Tensor wq = quantize_2d(raw::contiguous(w.detach()), DType::kF8E4M3, true, need_x);
  Tensor bias;
  if (b.defined()) {
    bias = raw::contiguous(b.detach());
    if (reinterpret_cast<uintptr_t>(bias.raw()) % 16 != 0) bias = bias.clone();
  }
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor y = gemm_tn(xq.data, xq.descale(), wq.data, wq.descale(), bias, /*forward=*/true)
                 .reshape(out_shape);
  if (node) {
    node->x_shape = x.shape();
    node->saved = {xq.data_t, xq.meta, wq.data_t, wq.meta};
    set_history(y, node);
  }
  return y;
#else
  return Tensor();
#endif
}

}  // namespace kiln
