// fp8 current scaling, fp8_linear and fp8_mlp_gelu: argument checks, the autograd nodes and their
// backward, the switches of its fused paths, and the dispatch to the CUDA kernels and cuBLASLt
// GEMMs in core/ops/fp8.cu. There is no CPU kernel: on the CPU (or a build without CUDA) every
// entry point is a kiln::Error naming the op.
#include "core/ops/fp8.h"

#include <atomic>
#include <memory>
#include <utility>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/activation.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/device_dispatch.h"
#include "core/recompute.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/fp8.cu; tensors on the device of their first argument.
// Error naming `op` unless t's GPU has compute capability 8.9+.
void fp8_require_gpu(const char* op, const Tensor& t);
// x contiguous bf16 / f16 / f32, numel > 0; meta f32 (>= 1 element): meta[0] = max |x|.
void fp8_amax(const Tensor& x, const Tensor& meta);
// x2 (R, C) contiguous, meta (3) with meta[0] = amax: meta[1] = scale, meta[2] = 1 / scale,
// q (R, C) when defined, qt (C, R) when defined (fp8, one dtype); colsum (C) of x2's dtype when
// defined (qt must be): x2's column sums, from the transposing cast.
void fp8_cast(const Tensor& x2, const Tensor& meta, const Tensor& q, const Tensor& qt,
              const Tensor& colsum);
// fp8_cast with delayed scaling: slots (3) f32 the ring of amaxes, `use` the uses before this one
// (use 0: meta[0] must hold x2's amax); see core/ops/fp8.cu.
void fp8_cast_delayed(const Tensor& x2, const Tensor& meta, const Tensor& slots, int64_t use,
                      const Tensor& q, const Tensor& qt, const Tensor& colsum);
// d (m, n) bf16 = (a_descale a (m, k)) (b_descale b (n, k))^T (+ bias (n)); false: no algorithm.
// fast_accum: cuBLASLt's fast accumulation (no periodic promotion to fp32). gelu_aux (m, n) bf16
// when defined: it receives that sum and d = gelu_tanh of it (the GELU_AUX(_BIAS) epilogue).
// c (m, n) bf16 contiguous when defined: added by the GEMM (beta = 1; a residual).
bool fp8_gemm_tn(const Tensor& a, const Tensor& a_descale, const Tensor& b, const Tensor& b_descale,
                 const Tensor& bias, const Tensor& d, bool fast_accum = false,
                 const Tensor& gelu_aux = Tensor(), const Tensor& c = Tensor());
// d (m, n) f32 += (a_descale a) (b_descale b)^T (written over d when overwrite); false: no
// algorithm.
bool fp8_gemm_tn_f32(const Tensor& a, const Tensor& a_descale, const Tensor& b,
                     const Tensor& b_descale, const Tensor& d, bool overwrite);
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
constexpr const char* kMlp = "fp8_mlp_gelu";

EnvSwitch g_fast_accum("KILN_FP8_FAST_ACCUM", true);
EnvSwitch g_fused_dbias("KILN_FP8_FUSED_DBIAS", true);
EnvSwitch g_fused_mlp("KILN_FP8_FUSED_MLP", true);
EnvSwitch g_delayed("KILN_FP8_DELAYED_SCALING", true);
EnvSwitch g_direct_wgrad("KILN_FP8_DIRECT_WGRAD", true);
EnvSwitch g_resid("KILN_FP8_RESID_EPILOGUE", true);

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

// The checks of fp8_linear(x, w, b) (op names the caller): x (..., K) and w (N, K) bf16 on one
// CUDA device, K, N and the row count multiples of 16, b (N) bf16 or undefined.
void check_linear_args(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  check_defined(op, {&x, &w});
  KILN_CHECK(x.device().is_cuda())
      << op << ": fp8 GEMMs run on a CUDA GPU (compute capability 8.9+) only; x is " << x.str();
  check_same_device(op, {&x, &w});
  KILN_CHECK(x.dtype() == DType::kBF16 && w.dtype() == DType::kBF16)
      << op << ": x and w must be bf16, got " << x.str() << " and " << w.str();
  check_dim(op, "w (N, K)", w, 2);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << op << ": x " << x.str() << " does not match w " << w.str() << " (N, K)";
  KILN_CHECK(fp8_linear_applies(x, w))
      << op << ": K, N and the row count must be positive multiples of 16 (cuBLASLt fp8), "
      << "got x " << x.str() << ", w " << w.str();
  if (b.defined()) {
    check_same_device(op, {&x, &b});
    KILN_CHECK(b.dtype() == DType::kBF16 && b.dim() == 1 && b.size(0) == w.size(0))
        << op << ": bias " << b.str() << " must be bf16 (N) for w " << w.str();
  }
  ops::on_cuda(op, "x", x);
}

#if KILN_WITH_CUDA
// x2 (R, C) contiguous on CUDA -> its fp8 copies (no checks). With colsum (transposed must be
// set): *colsum = x2's column sums (C) in x2's dtype, from the transposing cast. With h: delayed
// scaling through that history (its first use, and a use on another device, scale by x2's own
// amax).
Fp8Tensor quantize_2d(const Tensor& x2, DType fp8, bool rowwise, bool transposed,
                      Tensor* colsum = nullptr, Fp8History* h = nullptr) {
  Fp8Tensor r;
  const int64_t rows = x2.size(0), cols = x2.size(1);
  // {amax, scale, descale} 8 bytes into the (aligned) allocation: descale 16-byte aligned.
  r.meta = Tensor::empty({5}, DType::kF32, x2.device()).narrow(0, 2, 3);
  KILN_CHECK(reinterpret_cast<uintptr_t>(r.descale().raw()) % 16 == 0)
      << "internal: fp8 descale at " << r.descale().raw() << " is not 16-byte aligned";
  if (rowwise) r.data = Tensor::empty({rows, cols}, fp8, x2.device());
  if (transposed) r.data_t = Tensor::empty({cols, rows}, fp8, x2.device());
  if (colsum) *colsum = Tensor::empty({cols}, x2.dtype(), x2.device());
  const Tensor sums = colsum ? *colsum : Tensor();
  if (h == nullptr) {
    cuda::fp8_amax(x2, r.meta);
    cuda::fp8_cast(x2, r.meta, r.data, r.data_t, sums);
    return r;
  }
  // In an activation recomputation: the first run's meta (recorded below; meta[0] the amax it
  // scaled by), and the history left alone, so the recomputed tensor is the first run's bit for
  // bit.
  RecomputeLog* log = recompute_log();
  if (log != nullptr && log->replaying && log->next < log->tensors.size()) {
    r.meta = log->tensors[log->next++];
    cuda::fp8_cast(x2, r.meta, r.data, r.data_t, sums);
    return r;
  }
  if (!h->slots.defined() || h->slots.device() != x2.device()) {
    h->slots = Tensor::zeros({3}, DType::kF32, x2.device());
    h->uses = 0;
  }
  if (h->uses == 0) cuda::fp8_amax(x2, r.meta);
  cuda::fp8_cast_delayed(x2, r.meta, h->slots, h->uses, r.data, r.data_t, sums);
  ++h->uses;
  if (log != nullptr && !log->replaying) log->tensors.push_back(r.meta);
  return r;
}

Fp8History* history(const std::shared_ptr<Fp8LinearScaling>& s, Fp8History Fp8LinearScaling::*m) {
  return s ? &((*s).*m) : nullptr;
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

// b detached and contiguous on a 16-byte boundary (an epilogue's bias), or undefined.
Tensor aligned_bias(const Tensor& b) {
  if (!b.defined()) return Tensor();
  Tensor bias = raw::contiguous(b.detach());
  if (reinterpret_cast<uintptr_t>(bias.raw()) % 16 != 0) bias = bias.clone();
  return bias;
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
std::atomic<int64_t> g_unfused_gelu{0};
std::atomic<int64_t> g_direct_wgrads{0};

// The f32 .grad a weight gradient goes straight into (autograd's accumulation_target, claimed:
// `overwrite` says it was stale, to be written with beta = 0), or undefined.
struct GradInto {
  Tensor t;
  bool overwrite = false;
};

GradInto wgrad_into(const Edge& e, const Shape& w_shape, Device device) {
  GradInto r;
  if (g_direct_wgrad.on() && e.fn) r.t = accumulation_target(e, w_shape, device, &r.overwrite);
  return r;
}

// dW = dY^T X from dY^T (N, M) and X^T (K, M) in fp8: added into (or written over) the f32 .grad
// into.t when given, returning the accumulated marker; else a new bf16 (N, K). Undefined when
// cuBLASLt offers no algorithm. A claimed .grad the f32 GEMM could not take is made current
// (zeroed where stale) and the bf16 gradient goes back for autograd to add into it.
Tensor weight_grad(const Tensor& gyt, const Tensor& gyt_descale, const Tensor& x_t,
                   const Tensor& x_descale, const GradInto& into) {
  if (into.t.defined()) {
    if (cuda::fp8_gemm_tn_f32(gyt, aligned_descale(gyt_descale), x_t, aligned_descale(x_descale),
                              into.t, into.overwrite)) {
      g_direct_wgrads.fetch_add(1, std::memory_order_relaxed);
      return accumulated_marker();
    }
    if (into.overwrite) Tensor(into.t).zero_();
  }
  return try_gemm_tn(gyt, gyt_descale, x_t, x_descale, Tensor());
}

Tensor descale_of(const Tensor& meta) { return meta.narrow(0, 2, 1).reshape({}); }

struct LinearGrads {
  Tensor gx, gw, gb;  // (M, K), (N, K), (N); each undefined unless asked for
};

// The gradients of y = x w^T (+ b) given gy (M, N) bf16 contiguous and the forward's fp8 copies
// x_t (K, M) (for gw) and w_t (K, N) (for gx), e4m3, with their metas. dY goes to e5m2: its
// row-wise copy for dX = dY W, its transpose (N, M) for dW = dY^T X. Where cuBLASLt offers no
// e5m2 x e4m3 kernel, dY goes to e4m3 instead (counted: fp8_e4m3_backward_count()). gb = the
// column sums of the bf16 dY: from the transposing cast when KILN_FP8_FUSED_DBIAS=1 and dW is
// asked for (f32 partials, one rounding), else sum_to (f64 accumulation). With gy_hist, dY's e5m2
// cast takes delayed scaling (the e4m3 fallback keeps current scaling). With w_into, dW goes
// straight into that f32 .grad (weight_grad; gw is then the accumulated marker).
LinearGrads linear_grads(const Tensor& gy, const Tensor& x_t, const Tensor& x_meta,
                         const Tensor& w_t, const Tensor& w_meta, bool need_x, bool need_w,
                         bool need_b, Fp8History* gy_hist, const GradInto& w_into = GradInto()) {
  LinearGrads r;
  const bool fused_b = need_b && need_w && g_fused_dbias.on();
  if (need_x || need_w) {
    const Fp8Tensor gq =
        quantize_2d(gy, DType::kF8E5M2, need_x, need_w, fused_b ? &r.gb : nullptr, gy_hist);
    if (need_x) r.gx = try_gemm_tn(gq.data, gq.descale(), w_t, descale_of(w_meta), Tensor());
    if (need_w) r.gw = weight_grad(gq.data_t, gq.descale(), x_t, descale_of(x_meta), w_into);
    const bool redo_x = need_x && !r.gx.defined(), redo_w = need_w && !r.gw.defined();
    if (redo_x || redo_w) {  // only the GEMMs cuBLASLt declined, with dY in e4m3
      ++g_e4m3_backward;
      const Fp8Tensor g4 = quantize_2d(gy, DType::kF8E4M3, redo_x, redo_w);
      if (redo_x) r.gx = gemm_tn(g4.data, g4.descale(), w_t, descale_of(w_meta), Tensor());
      if (redo_w) r.gw = gemm_tn(g4.data_t, g4.descale(), x_t, descale_of(x_meta), Tensor());
    }
  }
  if (need_b && !fused_b) r.gb = cuda::sum_to(gy, {gy.size(1)});
  return r;
}

// y = fp8_linear(x, w, b): saved = {x_t (K, M) e4m3, x meta (3), w_t (K, N) e4m3, w meta (3)};
// x_t is undefined when w needs no gradient, w_t when x needs none.
class Fp8LinearNode final : public Node {
 public:
  const char* name() const override { return "Fp8Linear"; }
  Shape x_shape, w_shape;
  std::shared_ptr<Fp8LinearScaling> scaling;  // delayed scaling's histories, or null
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gy = rows_of(raw::convert(g[0].detach(), DType::kBF16));  // (M, N)
    const GradInto into = wants(1) ? wgrad_into(next[1], w_shape, gy.device()) : GradInto();
    LinearGrads r = linear_grads(gy, saved[0], saved[1], saved[2], saved[3], wants(0), wants(1),
                                 wants(2), history(scaling, &Fp8LinearScaling::gy), into);
    if (r.gx.defined()) r.gx = r.gx.reshape(x_shape);
    return {r.gx, r.gw, r.gb};
  }
};

// gelu_tanh(xq wq^T + bias) (M, H) bf16 and *pre = the GELU input (M, H) bf16: the bias and GELU
// in the fp8 GEMM's epilogue (GELU_AUX_BIAS); where cuBLASLt offers no such fp8 algorithm, the
// fp8 GEMM with the bias, then kiln's GELU (counted: fp8_mlp_unfused_gelu_count()).
Tensor gelu_gemm(const Fp8Tensor& xq, const Fp8Tensor& wq, const Tensor& bias, Tensor* pre) {
  const int64_t m = xq.data.size(0), n = wq.data.size(0);
  Tensor h = Tensor::empty({m, n}, DType::kBF16, xq.data.device());
  *pre = Tensor::empty({m, n}, DType::kBF16, xq.data.device());
  if (cuda::fp8_gemm_tn(xq.data, xq.descale(), wq.data, wq.descale(), bias, h,
                        fp8_fast_accum_forward(), *pre))
    return h;
  ++g_unfused_gelu;
  *pre = gemm_tn(xq.data, xq.descale(), wq.data, wq.descale(), bias, /*forward=*/true);
  NoGradGuard no_grad;
  return gelu(*pre);
}

// hq wq^T + r (+ bias) (M, N) bf16, r (M, N) bf16 contiguous (the residual) added by the GEMM
// (beta = 1: cuBLASLt adds C before the bias); where cuBLASLt offers no such fp8 algorithm, the
// GEMM, then an add.
Tensor residual_gemm(const Fp8Tensor& hq, const Fp8Tensor& wq, const Tensor& bias,
                     const Tensor& r) {
  Tensor d = Tensor::empty({hq.data.size(0), wq.data.size(0)}, DType::kBF16, hq.data.device());
  if (cuda::fp8_gemm_tn(hq.data, aligned_descale(hq.descale()), wq.data,
                        aligned_descale(wq.descale()), bias, d, fp8_fast_accum_forward(), Tensor(),
                        r))
    return d;
  d = gemm_tn(hq.data, hq.descale(), wq.data, wq.descale(), bias, /*forward=*/true);
  return cuda::binary(cuda::BinaryOp::kAdd, d, r);
}

// dh (M, H) bf16 contiguous -> dh * gelu_tanh'(pre), in place where both lie on 16-byte
// boundaries (kiln's dgelu_bgrad kernel, core/ops/matmul.cu); *gb1 = its column sums when asked.
Tensor dgelu(const Tensor& dh, const Tensor& pre, Tensor* gb1) {
  if (dh.aligned_to(16) && pre.aligned_to(16)) {
    cuda::dgelu_bgrad_inplace(dh, pre, gb1);
    return dh;
  }
  Tensor d = cuda::gelu_input_grad(dh, pre);
  if (gb1) *gb1 = cuda::sum_to(d, {d.size(1)});
  return d;
}

// y = fp8_mlp_gelu(x, w1, b1, w2, b2[, residual]) with M rows, C = x's width, H = w1's rows, C2 =
// w2's rows: saved = {x_t (C, M) e4m3, x meta, w1_t (C, H) e4m3, w1 meta, pre (M, H) bf16, h_t
// (H, M) e4m3, h meta, w2_t (H, C2) e4m3, w2 meta}; each only where a gradient needs it (as
// Fp8LinearNode). next: x, w1, b1, w2, b2[, residual] (the residual's gradient is dY).
// Memory: C + H bytes (fp8 x^T, h^T) + 2H (bf16 pre) per row, as the composed fp8_linear -> gelu
// -> fp8_linear keeps, against 2C + 4H (bf16 x, pre, h) in mlp_gelu; at GPT-2 1.5B (C 1600,
// H 6400, 8192 rows) 170 MB a block against 236 MB, plus the two fp8 weight copies (20 MB).
class Fp8MlpNode final : public Node {
 public:
  const char* name() const override { return "Fp8MlpGelu"; }
  Shape x_shape, w1_shape, w2_shape;
  std::shared_ptr<Fp8LinearScaling> fc, proj;  // delayed scaling's histories, or null
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const bool nx = wants(0), nw1 = wants(1), nb1 = wants(2), nw2 = wants(3), nb2 = wants(4);
    const bool nh = nx || nw1 || nb1;  // the hidden gradient is needed
    Tensor gy = rows_of(raw::convert(g[0].detach(), DType::kBF16));  // (M, C2)
    const GradInto into2 = nw2 ? wgrad_into(next[3], w2_shape, gy.device()) : GradInto();
    // c_proj: dH = dY W2 (M, H), dW2 = dY^T h, db2 (fused into dY's cast when switched on).
    LinearGrads g2 = linear_grads(gy, saved[5], saved[6], saved[7], saved[8], nh, nw2, nb2,
                                  history(proj, &Fp8LinearScaling::gy), into2);
    LinearGrads g1;
    Tensor gb1;
    if (nh) {  // dH -> dpre = dH gelu'(pre) in place, b1's gradient its column sums; then c_fc
      const Tensor dpre = dgelu(g2.gx, saved[4], nb1 ? &gb1 : nullptr);
      const GradInto into1 = nw1 ? wgrad_into(next[1], w1_shape, gy.device()) : GradInto();
      if (nx || nw1)
        g1 = linear_grads(dpre, saved[0], saved[1], saved[2], saved[3], nx, nw1, false,
                          history(fc, &Fp8LinearScaling::gy), into1);
    }
    if (g1.gx.defined()) g1.gx = g1.gx.reshape(x_shape);
    if (next.size() == 6) return {g1.gx, g1.gw, gb1, g2.gw, g2.gb, wants(5) ? g[0] : Tensor()};
    return {g1.gx, g1.gw, gb1, g2.gw, g2.gb};
  }
};
#endif

}  // namespace

bool fp8_fast_accum_forward() { return g_fast_accum.on(); }
void set_fp8_fast_accum_override(int on) { g_fast_accum.force(on); }
bool fp8_fused_dbias() { return g_fused_dbias.on(); }
void set_fp8_fused_dbias_override(int on) { g_fused_dbias.force(on); }
bool fp8_fused_mlp() { return g_fused_mlp.on(); }
void set_fp8_fused_mlp_override(int on) { g_fused_mlp.force(on); }
bool fp8_delayed_scaling() { return g_delayed.on(); }
void set_fp8_delayed_scaling_override(int on) { g_delayed.force(on); }
void set_fp8_direct_wgrad_override(int on) { g_direct_wgrad.force(on); }
bool fp8_resid_epilogue() { return g_resid.on(); }
void set_fp8_resid_epilogue_override(int on) { g_resid.force(on); }

int64_t fp8_direct_wgrad_count() {
#if KILN_WITH_CUDA
  return g_direct_wgrads.load();
#else
  return 0;
#endif
}

int64_t fp8_e4m3_backward_count() {
#if KILN_WITH_CUDA
  return g_e4m3_backward.load();
#else
  return 0;
#endif
}

int64_t fp8_mlp_unfused_gelu_count() {
#if KILN_WITH_CUDA
  return g_unfused_gelu.load();
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

Fp8Tensor fp8_quantize(const Tensor& x, DType fp8_dtype, bool rowwise, bool transposed,
                       Tensor* colsum) {
  check_quantize_input("fp8_quantize", x);
  check_fp8_dtype("fp8_quantize", fp8_dtype);
  KILN_CHECK(rowwise || transposed) << "fp8_quantize: asked for neither q nor its transpose";
  KILN_CHECK(x.dim() >= 1) << "fp8_quantize: x must have at least one dim, got " << x.str();
  KILN_CHECK(colsum == nullptr || transposed)
      << "fp8_quantize: the column sums come with the transposed copy only";
#if KILN_WITH_CUDA
  return quantize_2d(rows_of(x), fp8_dtype, rowwise, transposed, colsum);
#else
  return Fp8Tensor();
#endif
}

Fp8Tensor fp8_quantize_delayed(const Tensor& x, DType fp8_dtype, Fp8History* h, bool rowwise,
                               bool transposed) {
  check_quantize_input("fp8_quantize_delayed", x);
  check_fp8_dtype("fp8_quantize_delayed", fp8_dtype);
  KILN_CHECK(h != nullptr) << "fp8_quantize_delayed: no history";
  KILN_CHECK(rowwise || transposed)
      << "fp8_quantize_delayed: asked for neither q nor its transpose";
  KILN_CHECK(x.dim() >= 1) << "fp8_quantize_delayed: x must have at least one dim, got " << x.str();
#if KILN_WITH_CUDA
  return quantize_2d(rows_of(x), fp8_dtype, rowwise, transposed, nullptr, h);
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

Tensor fp8_linear(const Tensor& x, const Tensor& w, const Tensor& b,
                  std::shared_ptr<Fp8LinearScaling> scaling) {
  check_linear_args(kLinear, x, w, b);
#if KILN_WITH_CUDA
  cuda::fp8_require_gpu(kLinear, x);
  // Recorded first: which gradients are needed decides which transposed copies the forward keeps.
  auto node = record<Fp8LinearNode>({&x, &w, &b});
  const bool need_x = node && node->next[0].fn, need_w = node && node->next[1].fn;
  const Fp8Tensor xq = quantize_2d(rows_of(x), DType::kF8E4M3, true, need_w, nullptr,
                                   history(scaling, &Fp8LinearScaling::x));
  const Fp8Tensor wq = quantize_2d(raw::contiguous(w.detach()), DType::kF8E4M3, true, need_x,
                                   nullptr, history(scaling, &Fp8LinearScaling::w));
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor y = gemm_tn(xq.data, xq.descale(), wq.data, wq.descale(), aligned_bias(b),
                     /*forward=*/true)
                 .reshape(out_shape);
  if (node) {
    node->x_shape = x.shape();
    node->w_shape = w.shape();
    node->scaling = std::move(scaling);
    node->saved = {xq.data_t, xq.meta, wq.data_t, wq.meta};
    set_history(y, node);
  }
  return y;
#else
  return Tensor();
#endif
}

Tensor fp8_mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                    const Tensor& b2, std::shared_ptr<Fp8LinearScaling> fc,
                    std::shared_ptr<Fp8LinearScaling> proj, const Tensor& residual) {
  check_linear_args(kMlp, x, w1, b1);
  check_defined(kMlp, {&w2});
  check_same_device(kMlp, {&x, &w2});
  check_dim(kMlp, "w2 (C2, H)", w2, 2);
  KILN_CHECK(w2.dtype() == DType::kBF16 && w2.size(1) == w1.size(0))
      << kMlp << ": w2 " << w2.str() << " must be bf16 and take the hidden width of w1 "
      << w1.str();
  KILN_CHECK(w2.size(0) > 0 && w2.size(0) % 16 == 0)
      << kMlp << ": w2's rows must be a positive multiple of 16 (cuBLASLt fp8), got " << w2.str();
  if (b2.defined()) {
    check_same_device(kMlp, {&x, &b2});
    KILN_CHECK(b2.dtype() == DType::kBF16 && b2.dim() == 1 && b2.size(0) == w2.size(0))
        << kMlp << ": bias " << b2.str() << " must be bf16 (C2) for w2 " << w2.str();
  }
  Shape out_shape = x.shape();
  out_shape.back() = w2.size(0);
  if (residual.defined()) {
    check_same_device(kMlp, {&x, &residual});
    KILN_CHECK(residual.dtype() == DType::kBF16 && residual.shape() == out_shape)
        << kMlp << ": residual " << residual.str() << " must be bf16 of the result's shape "
        << shape_str(out_shape);
  }
#if KILN_WITH_CUDA
  cuda::fp8_require_gpu(kMlp, x);
  auto node = residual.defined() ? record<Fp8MlpNode>({&x, &w1, &b1, &w2, &b2, &residual})
                                 : record<Fp8MlpNode>({&x, &w1, &b1, &w2, &b2});
  auto needs = [&node](int i) { return node && node->next[i].fn; };
  const bool nh = needs(0) || needs(1) || needs(2);  // the hidden gradient will be needed
  using S = Fp8LinearScaling;
  const Fp8Tensor xq =
      quantize_2d(rows_of(x), DType::kF8E4M3, true, needs(1), nullptr, history(fc, &S::x));
  const Fp8Tensor w1q = quantize_2d(raw::contiguous(w1.detach()), DType::kF8E4M3, true, needs(0),
                                    nullptr, history(fc, &S::w));
  Tensor pre;
  const Tensor h = gelu_gemm(xq, w1q, aligned_bias(b1), &pre);
  const Fp8Tensor hq =
      quantize_2d(h, DType::kF8E4M3, true, needs(3), nullptr, history(proj, &S::x));
  const Fp8Tensor w2q = quantize_2d(raw::contiguous(w2.detach()), DType::kF8E4M3, true, nh, nullptr,
                                    history(proj, &S::w));
  Tensor y = residual.defined()
                 ? residual_gemm(hq, w2q, aligned_bias(b2), rows_of(residual)).reshape(out_shape)
                 : gemm_tn(hq.data, hq.descale(), w2q.data, w2q.descale(), aligned_bias(b2),
                           /*forward=*/true)
                       .reshape(out_shape);
  if (node) {
    node->x_shape = x.shape();
    node->w1_shape = w1.shape();
    node->w2_shape = w2.shape();
    node->fc = std::move(fc);
    node->proj = std::move(proj);
    node->saved = {xq.data_t, xq.meta, w1q.data_t, w1q.meta, nh ? pre : Tensor(),
                   hq.data_t, hq.meta, w2q.data_t, w2q.meta};
    set_history(y, node);
  }
  return y;
#else
  return Tensor();
#endif
}

}  // namespace kiln
