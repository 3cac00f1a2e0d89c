// matmul and linear: shape logic, backward, and the CPU GEMM through OpenBLAS. CUDA tensors run
// the cuBLASLt paths in matmul.cu (fused linear / linear+GELU / MLP nodes live here).
#include "core/ops/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/activation.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/elementwise.h"
#include "core/ops/view.h"
#include "core/thread_pool.h"

namespace kiln {
namespace raw {

namespace {

std::atomic<int64_t> g_gemm_calls{0};

// OpenBLAS's own thread pool spins (sched_yield) between calls and competes with kiln's pool, so
// OpenBLAS runs single-threaded and kiln splits each GEMM over its pool instead: by rows of C when
// there are enough, else by columns. Each piece is an independent GEMM over the full K, so the
// result does not depend on the thread count.
void blas_single_threaded() {
  static bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

template <typename T>
void gemm_piece(bool ta, bool tb, int m, int n, int k, T alpha, const T* a, int lda, const T* b,
                int ldb, T beta, T* c, int ldc) {
  const CBLAS_TRANSPOSE ca = ta ? CblasTrans : CblasNoTrans, cb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>) {
    cblas_sgemm(CblasRowMajor, ca, cb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    cblas_dgemm(CblasRowMajor, ca, cb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

template <typename T>
void gemm_parallel(const Tensor& at, const Tensor& bt, const Tensor& ct, bool ta, bool tb,
                   double alpha, double beta) {
  const int m = static_cast<int>(ct.size(0)), n = static_cast<int>(ct.size(1));
  const int k = static_cast<int>(ta ? at.size(0) : at.size(1));
  const int lda = static_cast<int>(at.size(1)), ldb = static_cast<int>(bt.size(1));
  const T* a = at.data<T>();
  const T* b = bt.data<T>();
  T* c = ct.data<T>();
  const T al = static_cast<T>(alpha), be = static_cast<T>(beta);
  const double flops = 2.0 * m * n * k;
  const int64_t tiles_m = m / 64, tiles_n = n / 64;
  if (flops < 4e6 || num_threads() == 1 || (tiles_m < 2 && tiles_n < 2)) {
    gemm_piece<T>(ta, tb, m, n, k, al, a, lda, b, ldb, be, c, n);
    return;
  }
  if (tiles_m >= tiles_n) {  // split rows of C (and of op(A))
    parallel_for(tiles_m, 1, [&](int64_t t0, int64_t t1) {
      const int r0 = static_cast<int>(t0 * 64), r1 = t1 == tiles_m ? m : static_cast<int>(t1 * 64);
      const T* ap = ta ? a + r0 : a + static_cast<int64_t>(r0) * lda;
      gemm_piece<T>(ta, tb, r1 - r0, n, k, al, ap, lda, b, ldb, be,
                    c + static_cast<int64_t>(r0) * n, n);
    });
  } else {  // split columns of C (and of op(B))
    parallel_for(tiles_n, 1, [&](int64_t t0, int64_t t1) {
      const int c0 = static_cast<int>(t0 * 64), c1 = t1 == tiles_n ? n : static_cast<int>(t1 * 64);
      const T* bp = tb ? b + static_cast<int64_t>(c0) * ldb : b + c0;
      gemm_piece<T>(ta, tb, m, c1 - c0, k, al, a, lda, bp, ldb, be, c + c0, n);
    });
  }
}

}  // namespace

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool ta, bool tb, double alpha,
          double beta) {
  g_gemm_calls.fetch_add(1, std::memory_order_relaxed);
  blas_single_threaded();
  if (c.dtype() == DType::kF32) return gemm_parallel<float>(a, b, c, ta, tb, alpha, beta);
  KILN_CHECK(c.dtype() == DType::kF64) << "gemm: dtype " << c.dtype();
  gemm_parallel<double>(a, b, c, ta, tb, alpha, beta);
}

int64_t gemm_calls() { return g_gemm_calls.load(std::memory_order_relaxed); }

}  // namespace raw

namespace {

EnvSwitch g_packed_wgrad("KILN_PACKED_DIRECT_WGRAD", /*default_on=*/true);  // since 2026-12-06
std::atomic<int64_t> g_packed_wgrad_pieces{0};
// KILN_PACKED_WGRAD_BATCHED=0: the equal pieces of a packed weight (Llama's gate / up) each take
// their own weight GEMM even where their .grads lie one stride apart (cuda::packed_wgrads_batched).
EnvSwitch g_packed_batched("KILN_PACKED_WGRAD_BATCHED", /*default_on=*/true);
std::atomic<int64_t> g_packed_batched_gemms{0};

struct MatmulDims {
  int64_t batch = 1, m = 0, k = 0, n = 0;
  bool b_batched = false;
  Shape out_shape;
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  KILN_CHECK(a.dim() >= 2 && b.dim() >= 2)
      << "matmul: operands need at least 2 dims, got " << a.str() << " and " << b.str();
  MatmulDims d;
  d.m = ta ? a.size(-1) : a.size(-2);
  d.k = ta ? a.size(-2) : a.size(-1);
  int64_t kb = tb ? b.size(-1) : b.size(-2);
  d.n = tb ? b.size(-2) : b.size(-1);
  KILN_CHECK(d.k == kb) << "matmul: inner dimensions differ (" << d.k << " vs " << kb << ") for "
                        << a.str() << (ta ? "^T" : "") << " @ " << b.str() << (tb ? "^T" : "");
  d.batch = a.numel() / std::max<int64_t>(d.m * d.k, 1);
  if (a.numel() == 0) d.batch = shape_numel(Shape(a.shape().begin(), a.shape().end() - 2));
  d.b_batched = b.dim() > 2;
  if (d.b_batched) {
    KILN_CHECK(b.dim() == a.dim() &&
               std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()))
        << "matmul: batch dims of " << a.str() << " and " << b.str() << " differ";
  }
  d.out_shape = Shape(a.shape().begin(), a.shape().end() - 2);
  d.out_shape.push_back(d.m);
  d.out_shape.push_back(d.n);
  return d;
}

Tensor matmul_raw(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  MatmulDims d = matmul_dims(a, b, ta, tb);
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(a)) return cuda::matmul(a, b, ta, tb);
#endif
  KILN_CHECK(a.device().is_cpu()) << "matmul on " << a.device() << " not built";
  Tensor ac = raw::to_compute(a), bc = raw::to_compute(b);
  Tensor out = Tensor::empty(d.out_shape, ac.dtype());
  if (out.numel() == 0) return raw::convert(out, a.dtype());
  if (d.k == 0) {
    raw::fill(out, 0.0);
    return raw::convert(out, a.dtype());
  }
  if (!d.b_batched && !ta) {  // fold the batch into M: one large GEMM
    raw::gemm(ac.reshape({d.batch * d.m, d.k}), bc, out.reshape({d.batch * d.m, d.n}), false, tb);
    return raw::convert(out, a.dtype());
  }
  Tensor a3 = ac.reshape({d.batch, ta ? d.k : d.m, ta ? d.m : d.k});
  Tensor b3 = d.b_batched ? bc.reshape({d.batch, tb ? d.n : d.k, tb ? d.k : d.n}) : bc;
  Tensor o3 = out.reshape({d.batch, d.m, d.n});
  for (int64_t i = 0; i < d.batch; ++i) {
    Tensor bi = d.b_batched ? b3.narrow(0, i, 1).reshape({b3.size(1), b3.size(2)}) : b3;
    raw::gemm(a3.narrow(0, i, 1).reshape({a3.size(1), a3.size(2)}), bi,
              o3.narrow(0, i, 1).reshape({d.m, d.n}), ta, tb);
  }
  return raw::convert(out, a.dtype());
}

class MatmulNode final : public Node {
 public:
  const char* name() const override { return "Matmul"; }
  bool ta = false, tb = false;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &a = saved[0], &b = saved[1];
    const Tensor& go = g[0];  // (..., M, N)
    Tensor ga, gb;
    if (wants(0)) {
      // d op(a) = g op(b)^T ; if ta, da = (g op(b)^T)^T = op(b) g^T
      // dA^T when ta: (g op(b)^T)^T; computed as g op(b)^T then transposed, which also works
      // when b is shared across a's batch.
      ga = matmul_raw(go, b, false, !tb);
      if (ta) ga = raw::contiguous(ga.transpose(-1, -2));
    }
    if (wants(1)) {
      if (b.dim() > 2) {
        gb = tb ? matmul_raw(go, a, true, ta) : matmul_raw(a, go, !ta, false);
      } else {  // b shared across the batch: flatten the batch into the reduction dim
        const int64_t n = go.size(-1);
        Tensor g2 = raw::contiguous(go).reshape({-1, n});
        Tensor a2 = ta ? raw::contiguous(a.transpose(-1, -2)).reshape({-1, a.size(-2)})
                       : raw::contiguous(a).reshape({-1, a.size(-1)});
        gb = tb ? matmul_raw(g2, a2, true, false) : matmul_raw(a2, g2, true, false);
      }
    }
    return {ga, gb};
  }
};

#if KILN_WITH_CUDA
// (..., n) viewed as (rows, n) without autograd (copies only when not contiguous).
Tensor rows_of(const Tensor& t, int64_t n) { return t.detach().reshape({-1, n}); }

Shape with_last(const Shape& s, int64_t last) {
  Shape out = s;
  out.back() = last;
  return out;
}

// Direct wgrad (a weight GEMM adding into the f32 .grad) is on unless KILN_DIRECT_WGRAD=0 (for A/B
// measurements).
EnvSwitch g_direct_wgrad("KILN_DIRECT_WGRAD", /*default_on=*/true);
bool direct_wgrad_on() { return g_direct_wgrad.on(); }

// The f32 .grad a weight's gradient may be added into by its GEMM (autograd's
// accumulation_target, claimed: *overwrite says the GEMM must write it with beta = 0).
Tensor wgrad_target(const Edge& e, const Tensor& w, bool* overwrite) {
  *overwrite = false;
  return direct_wgrad_on() && e.fn ? accumulation_target(e, w.shape(), w.device(), overwrite)
                                   : Tensor();
}

// KILN_BIAS_DIRECT_GRAD=0: a bias gradient goes back as a new 16-bit tensor that autograd adds
// into the .grad, as before.
EnvSwitch g_bias_direct("KILN_BIAS_DIRECT_GRAD", /*default_on=*/true);

// The f32 .grad a bias's gradient (the column sums of gy) is written straight into
// (accumulation_target, claimed: *overwrite says it was stale), or undefined.
Tensor bias_target(const Edge& e, bool wanted, int64_t out_f, const Tensor& w, bool* overwrite) {
  *overwrite = false;
  return wanted && direct_wgrad_on() && g_bias_direct.on() && e.fn
             ? accumulation_target(e, Shape{out_f}, w.device(), overwrite)
             : Tensor();
}

// A packed weight (concat_or_view along dim 0 of per-linear weights: Llama's q/k/v and gate/up,
// models/transformer.cc packed_linear): the f32 .grad of each piece (concat_accumulation_targets)
// that the weight GEMM adds its block of rows into, one GEMM per piece reading gy's column block in
// place, when direct wgrad and KILN_PACKED_DIRECT_WGRAD are on and cuBLASLt's alignment wants are
// met: gy (rows, OUT) row-major with a row of 16-byte multiple and each block 16-byte aligned.
// Empty: the packed gradient goes back through the concat (rounded to gy's dtype, then each block
// added into its .grad by its own kernel).
// (*overwrite)[i]: piece i's .grad was stale, to be written with beta = 0.
std::vector<Tensor> packed_wgrad_targets(const Edge& e, const Tensor& gy,
                                         std::vector<char>* overwrite) {
  overwrite->clear();
  const int64_t es = static_cast<int64_t>(dtype_size(gy.dtype()));
  if (!direct_wgrad_on() || !g_packed_wgrad.on() || !e.fn || gy.dim() != 2 || !gy.is_contiguous() ||
      !gy.aligned_to(16) || (gy.size(1) * es) % 16 != 0)
    return {};
  std::vector<Tensor> into = concat_accumulation_targets(e, gy.device(), overwrite);
  int64_t off = 0;
  bool aligned = true;
  for (const Tensor& t : into) {
    aligned = aligned && (off * es) % 16 == 0;
    off += t.size(0);
  }
  if (aligned && off == gy.size(1)) return into;
  for (size_t i = 0; i < into.size(); ++i)  // claimed, not used: the stale ones count as zeros
    if ((*overwrite)[i]) into[i].zero_();
  overwrite->clear();
  return {};
}

// into[i] (f32, (rows_i, IN)) += gy[:, off_i : off_i + rows_i]^T @ x2 (written over where
// overwrite[i]): the blocks of packed_wgrad_targets, each its own GEMM with the packed row as gy's
// leading dimension.
void add_packed_wgrads(const Tensor& gy, const Tensor& x2, const std::vector<Tensor>& into,
                       const std::vector<char>& overwrite) {
  g_packed_wgrad_pieces.fetch_add(static_cast<int64_t>(into.size()), std::memory_order_relaxed);
  const bool same_flag =
      std::all_of(overwrite.begin(), overwrite.end(), [&](char o) { return o == overwrite[0]; });
  if (g_packed_batched.on() && same_flag && !into.empty() &&
      cuda::packed_wgrads_batched(gy, x2, into, overwrite[0] != 0)) {
    g_packed_batched_gemms.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  int64_t off = 0;
  for (size_t i = 0; i < into.size(); ++i) {
    const Tensor& t = into[i];
    Tensor unused;
    cuda::linear_backward(gy.narrow(1, off, t.size(0)), x2, t, false, true, false, &unused, &unused,
                          &unused, t, overwrite[i] != 0);
    off += t.size(0);
  }
}

// CUDA y = [gelu](x w^T + b) [+ residual]: saved = {x2, w} (+ the GELU input with gelu). next:
// x, w, b[, residual].
class LinearCudaNode final : public Node {
 public:
  const char* name() const override {
    return gelu ? "LinearGeluCuda" : (next.size() == 4 ? "LinearAddCuda" : "LinearCuda");
  }
  Shape x_shape;
  bool gelu = false;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &x2 = saved[0], &w = saved[1];
    Tensor gy = rows_of(g[0], w.size(0));
    if (gelu) gy = cuda::gelu_input_grad(gy, saved[2]);
    Tensor gx, gw, gb;
    bool fresh = false;
    std::vector<char> fresh_pieces;
    const Tensor into = wants(1) ? wgrad_target(next[1], w, &fresh) : Tensor();
    const std::vector<Tensor> pieces = wants(1) && !into.defined()
                                           ? packed_wgrad_targets(next[1], gy, &fresh_pieces)
                                           : std::vector<Tensor>();
    // With pieces the bias gradient is still the packed one (one column sum), split by its concat.
    bool fresh_b = false;
    const Tensor binto = bias_target(next[2], wants(2), w.size(0), w, &fresh_b);
    cuda::linear_backward(gy, x2, w, wants(0), wants(1) && pieces.empty(), wants(2), &gx, &gw, &gb,
                          into, fresh, binto, fresh_b);
    if (!pieces.empty()) add_packed_wgrads(gy, x2, pieces, fresh_pieces);
    if (into.defined() || !pieces.empty()) gw = accumulated_marker();
    if (binto.defined()) gb = accumulated_marker();
    if (gx.defined()) gx = gx.reshape(x_shape);
    if (next.size() == 4) return {gx, gw, gb, wants(3) ? g[0] : Tensor()};  // d residual = gy
    return {gx, gw, gb};
  }
};

// CUDA y = linear(gelu(linear(x, w1, b1)), w2, b2) [+ residual]: saved = {x2, w1, pre, h, w2}.
// next: x, w1, b1, w2, b2[, residual].
class MlpCudaNode final : public Node {
 public:
  const char* name() const override { return "MlpGeluCuda"; }
  Shape x_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &x2 = saved[0], &w1 = saved[1], &pre = saved[2], &h = saved[3], &w2 = saved[4];
    const bool nx = wants(0), nw1 = wants(1), nb1 = wants(2), nw2 = wants(3), nb2 = wants(4);
    Tensor gy = rows_of(g[0], w2.size(0));
    Tensor gx, gw1, gb1, gw2, gb2, unused;
    bool fresh1 = false, fresh2 = false;
    const Tensor into2 = nw2 ? wgrad_target(next[3], w2, &fresh2) : Tensor();
    const Tensor into1 = nw1 ? wgrad_target(next[1], w1, &fresh1) : Tensor();
    bool fresh_b2 = false;
    const Tensor binto2 = bias_target(next[4], nb2, w2.size(0), w2, &fresh_b2);
    if (nw2 || nb2)
      cuda::linear_backward(gy, h, w2, false, nw2, nb2, &unused, &gw2, &gb2, into2, fresh2, binto2,
                            fresh_b2);
    if (binto2.defined()) gb2 = accumulated_marker();
    // The hidden gradient: kept from the input pass of a split backward, or computed here with the
    // GELU gradient (and b1's gradient) in the GEMM epilogue.
    Tensor dpre = std::move(dpre_);
    const bool b1_from_dpre = nb1 && dpre.defined();
    if (!dpre.defined() && (nx || nw1 || nb1))
      dpre = cuda::matmul_dgelu(gy, w2, pre, nb1 ? &gb1 : nullptr);
    if (nx || nw1 || b1_from_dpre)
      cuda::linear_backward(dpre, x2, w1, nx, nw1, b1_from_dpre, &gx, &gw1,
                            b1_from_dpre ? &gb1 : &unused, into1, fresh1);
    if (in_input_pass() && !nw1 && !nb1 && (next[1].fn || next[2].fn)) dpre_ = dpre;
    if (into1.defined()) gw1 = accumulated_marker();
    if (into2.defined()) gw2 = accumulated_marker();
    if (gx.defined()) gx = gx.reshape(x_shape);
    if (next.size() == 6) return {gx, gw1, gb1, gw2, gb2, wants(5) ? g[0] : Tensor()};
    return {gx, gw1, gb1, gw2, gb2};
  }

 private:
  // (M, HID) the hidden gradient, from the input pass of a split backward to its weight pass.
  Tensor dpre_;
};
#endif

void check_linear_args(const char* op, const Tensor& x, const Tensor& w, const Tensor& b) {
  check_float_args(op, {&x, &w});
  check_dim(op, "weight", w, 2);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << op << ": input " << x.str() << " does not match weight " << w.str() << " (OUT, IN)";
  if (b.defined()) {
    check_float_args(op, {&x, &b});
    KILN_CHECK(b.dim() == 1 && b.size(0) == w.size(0))
        << op << ": bias " << b.str() << " does not match weight " << w.str();
  }
}

// residual (defined) must be the (..., out) result of an op on x, in x's dtype and device.
void check_residual(const char* op, const Tensor& x, int64_t out, const Tensor& residual) {
  check_float_args(op, {&x, &residual});
  Shape want = x.shape();
  want.back() = out;
  KILN_CHECK(residual.shape() == want) << op << ": residual " << residual.str()
                                       << " must have the result's shape " << shape_str(want);
}

}  // namespace

void set_packed_direct_wgrad_override(int on) { g_packed_wgrad.force(on); }
int64_t packed_direct_wgrad_pieces() {
  return g_packed_wgrad_pieces.load(std::memory_order_relaxed);
}
void set_packed_wgrad_batched_override(int on) { g_packed_batched.force(on); }
int64_t packed_wgrad_batched_gemms() {
  return g_packed_batched_gemms.load(std::memory_order_relaxed);
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float_args("matmul", {&a, &b});
  Tensor out;
  {
    NoGradGuard ng;  // the raw path reshapes internally; record only the matmul itself
    out = matmul_raw(a, b, trans_a, trans_b);
  }
  if (auto n = record<MatmulNode>({&a, &b})) {
    n->ta = trans_a;
    n->tb = trans_b;
    n->saved = {a, b};
    set_history(out, n);
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_float_args("linear", {&x, &w});
  check_dim("linear", "weight", w, 2);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << "linear: input " << x.str() << " does not match weight " << w.str() << " (OUT, IN)";
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) {
    check_linear_args("linear", x, w, b);
    Tensor x2 = rows_of(x, x.size(-1));
    Tensor y = cuda::linear_forward(x2, w, b).reshape(with_last(x.shape(), w.size(0)));
    if (auto n = record<LinearCudaNode>({&x, &w, &b})) {
      n->x_shape = x.shape();
      n->saved = {x2, w.detach()};
      set_history(y, n);
    }
    return y;
  }
#endif
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor x2 = reshape(x, {-1, x.size(-1)});
  Tensor y = matmul(x2, w, false, true);
  if (b.defined()) {
    check_float_args("linear", {&x, &b});
    KILN_CHECK(b.dim() == 1 && b.size(0) == w.size(0))
        << "linear: bias " << b.str() << " does not match weight " << w.str();
    y = add(y, b);
  }
  return reshape(y, out_shape);
}

Tensor linear_add(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& residual) {
  check_linear_args("linear_add", x, w, b);
  check_residual("linear_add", x, w.size(0), residual);
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) {
    Tensor x2 = rows_of(x, x.size(-1));
    Tensor y =
        cuda::linear_forward(x2, w, b, rows_of(residual, w.size(0))).reshape(residual.shape());
    if (auto n = record<LinearCudaNode>({&x, &w, &b, &residual})) {
      n->x_shape = x.shape();
      n->saved = {x2, w.detach()};
      set_history(y, n);
    }
    return y;
  }
#endif
  return add(linear(x, w, b), residual);
}

}  // namespace kiln

namespace kiln {

Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_linear_args("linear_gelu", x, w, b);
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) {
    Tensor x2 = rows_of(x, x.size(-1)), pre;
    Tensor y = cuda::linear_gelu_forward(x2, w, b, &pre).reshape(with_last(x.shape(), w.size(0)));
    if (auto n = record<LinearCudaNode>({&x, &w, &b})) {
      n->x_shape = x.shape();
      n->gelu = true;
      n->saved = {x2, w.detach(), pre};
      set_history(y, n);
    }
    return y;
  }
#endif
  return gelu(linear(x, w, b));
}

Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                const Tensor& b2, const Tensor& residual) {
  check_linear_args("mlp_gelu", x, w1, b1);
  check_float_args("mlp_gelu", {&x, &w2});
  check_dim("mlp_gelu", "w2", w2, 2);
  KILN_CHECK(w2.size(1) == w1.size(0))
      << "mlp_gelu: w2 " << w2.str() << " does not take the hidden width of w1 " << w1.str();
  if (b2.defined()) {
    check_float_args("mlp_gelu", {&x, &b2});
    KILN_CHECK(b2.dim() == 1 && b2.size(0) == w2.size(0))
        << "mlp_gelu: bias " << b2.str() << " does not match w2 " << w2.str();
  }
  if (residual.defined()) check_residual("mlp_gelu", x, w2.size(0), residual);
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) {
    Tensor x2 = rows_of(x, x.size(-1)), pre;
    Tensor h = cuda::linear_gelu_forward(x2, w1, b1, &pre);
    const Tensor r2 = residual.defined() ? rows_of(residual, w2.size(0)) : Tensor();
    Tensor y = cuda::linear_forward(h, w2, b2, r2).reshape(with_last(x.shape(), w2.size(0)));
    auto n = residual.defined() ? record<MlpCudaNode>({&x, &w1, &b1, &w2, &b2, &residual})
                                : record<MlpCudaNode>({&x, &w1, &b1, &w2, &b2});
    if (n) {
      n->x_shape = x.shape();
      n->saved = {x2, w1.detach(), pre, h, w2.detach()};
      set_history(y, n);
    }
    return y;
  }
#endif
  Tensor y = linear(gelu(linear(x, w1, b1)), w2, b2);
  return residual.defined() ? add(y, residual) : y;
}

Tensor linear_fp8(const Tensor& x, const Tensor& w, double x_scale, double w_scale, DType out_dtype,
                  const Tensor& b) {
  check_defined("linear_fp8", {&x, &w});
  check_same_device("linear_fp8", {&x, &w});
  for (const Tensor* t : {&x, &w})
    KILN_CHECK(t->dtype() == DType::kF8E4M3 || t->dtype() == DType::kF8E5M2)
        << "linear_fp8: operands must be fp8 (e4m3 or e5m2), got " << t->str();
  KILN_CHECK(!(x.dtype() == DType::kF8E5M2 && w.dtype() == DType::kF8E5M2))
      << "linear_fp8: at most one operand may be e5m2";
  check_dim("linear_fp8", "x", x, 2);
  check_dim("linear_fp8", "w", w, 2);
  KILN_CHECK(x.size(1) == w.size(1))
      << "linear_fp8: x " << x.str() << " does not match w " << w.str() << " (N, K)";
  KILN_CHECK(out_dtype == DType::kBF16 || out_dtype == DType::kF32)
      << "linear_fp8: the result must be bf16 or f32, got " << out_dtype;
  if (b.defined()) {
    check_same_device("linear_fp8", {&x, &b});
    KILN_CHECK(b.dim() == 1 && b.size(0) == w.size(0))
        << "linear_fp8: bias " << b.str() << " does not match w " << w.str();
  }
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) return cuda::linear_fp8(x, w, x_scale, w_scale, out_dtype, b);
#endif
  KILN_CHECK(false) << "linear_fp8: needs a CUDA GPU (Hopper); got " << x.str();
  return Tensor();
}

}  // namespace kiln
