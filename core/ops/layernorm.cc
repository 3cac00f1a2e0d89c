// layer_norm and add_layer_norm: forward, backward, the CPU kernels and the dispatch to the CUDA
// kernels (core/ops/layernorm.cu). Forward saves the per-row mean and 1/std (in f32, or f64 for
// f64 inputs) so backward never recomputes the statistics.
#include "core/ops/layernorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/elementwise.h"
#include "core/ops/norm_grad_target.h"
#include "core/ops/op_util.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/layernorm.cu. x (..., C), residual (..., C) or undefined, w (C), b (C) or undefined.
// Outputs y, sum (= x + residual; only with a residual, pass null otherwise), mean, rstd (...).
void layer_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b,
                        double eps, Tensor* y, Tensor* sum, Tensor* mean, Tensor* rstd);
// Gradients at x (what was normalised) given gy; gres (or undefined) is added into dx.
// dw_into / db_into (f32 .grads, or undefined) take the weight / bias gradient instead of *dw / *db
// (written over when *_over).
void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, const Tensor& gres, bool want_dx, bool want_dw,
                         bool want_db, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dw_into,
                         bool dw_over, const Tensor& db_into, bool db_over);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

constexpr const char* kOp = "layer_norm";

int64_t row_grain(int64_t c) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(c, 1)); }

struct LayerNormOut {
  Tensor y;     // (..., C) in x's dtype
  Tensor mean;  // (...) compute dtype
  Tensor rstd;  // (...) compute dtype
};

// REQUIRES: arguments checked; b may be undefined.
LayerNormOut layer_norm_cpu(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  Tensor xc = raw::to_compute(x), wc = raw::to_compute(w);
  Tensor bc = b.defined() ? raw::to_compute(b) : Tensor();
  const Shape stat_shape(x.shape().begin(), x.shape().end() - 1);
  Tensor y = Tensor::empty(x.shape(), xc.dtype());
  Tensor mean = Tensor::empty(stat_shape, xc.dtype()), rstd = Tensor::empty(stat_shape, xc.dtype());
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    const T *px = xc.data<T>(), *pw = wc.data<T>();
    const T* pb = bc.defined() ? bc.data<T>() : nullptr;
    T *py = y.data<T>(), *pm = mean.data<T>(), *pr = rstd.data<T>();
    parallel_for(rows, row_grain(c), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * c;
        double s = 0;
        for (int64_t j = 0; j < c; ++j) s += xr[j];
        const double m = s / c;
        double v = 0;
        for (int64_t j = 0; j < c; ++j) v += (xr[j] - m) * (xr[j] - m);
        const T mt = static_cast<T>(m), rt = static_cast<T>(1.0 / std::sqrt(v / c + eps));
        pm[r] = mt;
        pr[r] = rt;
        T* yr = py + r * c;
        for (int64_t j = 0; j < c; ++j) {
          const T h = (xr[j] - mt) * rt;
          yr[j] = pb ? h * pw[j] + pb[j] : h * pw[j];
        }
      }
    });
  });
  return {raw::convert(y, x.dtype()), mean, rstd};
}

struct LayerNormGrads {
  Tensor dx, dw, db;  // undefined where not wanted
};

// dx = rstd * (gh - mean(gh) - h * mean(gh * h)) with h = (x - mean) * rstd, gh = gy * w;
// dw = sum_rows gy * h; db = sum_rows gy. Rows are summed in order (parallel over channels).
LayerNormGrads layer_norm_backward_cpu(const Tensor& gy, const Tensor& x, const Tensor& w,
                                       const Tensor& mean, const Tensor& rstd, bool want_dx,
                                       bool want_dw, bool want_db) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  Tensor xc = raw::to_compute(x), wc = raw::to_compute(w), gc = raw::to_compute(gy);
  const DType ct = xc.dtype();
  LayerNormGrads out;
  Tensor dx = want_dx ? Tensor::empty(x.shape(), ct) : Tensor();
  Tensor dw = want_dw ? Tensor::empty({c}, ct) : Tensor();
  Tensor db = want_db ? Tensor::empty({c}, ct) : Tensor();
  KILN_DISPATCH_FLOAT(ct, T, {
    const T *px = xc.data<T>(), *pw = wc.data<T>(), *pg = gc.data<T>();
    const T *pm = mean.data<T>(), *pr = rstd.data<T>();
    if (want_dx) {
      T* pdx = dx.data<T>();
      parallel_for(rows, row_grain(c), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T *xr = px + r * c, *gr = pg + r * c;
          const T m = pm[r], rs = pr[r];
          double sg = 0, sgh = 0;
          for (int64_t j = 0; j < c; ++j) {
            const double gh = gr[j] * pw[j];
            sg += gh;
            sgh += gh * ((xr[j] - m) * rs);
          }
          const T mg = static_cast<T>(sg / c), mgh = static_cast<T>(sgh / c);
          T* dr = pdx + r * c;
          for (int64_t j = 0; j < c; ++j)
            dr[j] = rs * (gr[j] * pw[j] - mg - (xr[j] - m) * rs * mgh);
        }
      });
    }
    if (want_dw || want_db) {
      T* pdw = want_dw ? dw.data<T>() : nullptr;
      T* pdb = want_db ? db.data<T>() : nullptr;
      parallel_for(c, 64, [&](int64_t c0, int64_t c1) {
        std::vector<double> aw(c1 - c0, 0.0), ab(c1 - c0, 0.0);
        for (int64_t r = 0; r < rows; ++r) {
          const T *xr = px + r * c, *gr = pg + r * c;
          const T m = pm[r], rs = pr[r];
          for (int64_t j = c0; j < c1; ++j) {
            aw[j - c0] += gr[j] * ((xr[j] - m) * rs);
            ab[j - c0] += gr[j];
          }
        }
        for (int64_t j = c0; j < c1; ++j) {
          if (pdw) pdw[j] = static_cast<T>(aw[j - c0]);
          if (pdb) pdb[j] = static_cast<T>(ab[j - c0]);
        }
      });
    }
  });
  if (want_dx) out.dx = raw::convert(dx, x.dtype());
  if (want_dw) out.dw = raw::convert(dw, w.dtype());
  if (want_db) out.db = raw::convert(db, w.dtype());
  return out;
}

// Either device. gres (CUDA only; undefined on the CPU) is added into dx. On CUDA, with the
// weight's / bias's input edges we / be, their gradients go straight into their f32 .grads where
// autograd offers them (ops::norm_grad_target), and the marker is returned for each.
LayerNormGrads layer_norm_backward_any(const Tensor& gy, const Tensor& x, const Tensor& w,
                                       const Tensor& mean, const Tensor& rstd, const Tensor& gres,
                                       bool want_dx, bool want_dw, bool want_db,
                                       const Edge* we = nullptr, const Edge* be = nullptr) {
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) {
    LayerNormGrads r;
    bool ow = false, ob = false;
    const Tensor iw = we ? ops::norm_grad_target(*we, want_dw, w, x, &ow) : Tensor();
    const Tensor ib = be ? ops::norm_grad_target(*be, want_db, w, x, &ob) : Tensor();
    cuda::layer_norm_backward(gy, x, w, mean, rstd, gres, want_dx, want_dw && !iw.defined(),
                              want_db && !ib.defined(), &r.dx, &r.dw, &r.db, iw, ow, ib, ob);
    r.dw = ops::param_grad_or_marker(iw, r.dw);
    r.db = ops::param_grad_or_marker(ib, r.db);
    return r;
  }
#else
  (void)we;
  (void)be;
#endif
  KILN_CHECK(!gres.defined()) << "internal: layer_norm: residual gradient on the CPU path";
  return layer_norm_backward_cpu(gy, x, w, mean, rstd, want_dx, want_dw, want_db);
}

class LayerNormNode final : public Node {
 public:
  const char* name() const override { return "LayerNorm"; }
  // saved: x (..., C), weight (C), mean (...), rstd (...). next: x, weight[, bias].
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const bool has_bias = next.size() == 3;
    LayerNormGrads r = layer_norm_backward_any(g[0], saved[0], saved[1], saved[2], saved[3],
                                               Tensor(), wants(0), wants(1), has_bias && wants(2),
                                               &next[1], has_bias ? &next[2] : nullptr);
    if (has_bias) return {r.dx, r.dw, r.db};
    return {r.dx, r.dw};
  }
};

// The fused residual step (CUDA only: the CPU path composes add and layer_norm). Outputs: 0 the
// sum x + residual, 1 the normalised sum.
class AddLayerNormNode final : public Node {
 public:
  const char* name() const override { return "AddLayerNorm"; }
  // saved: sum (..., C) detached, weight (C), mean (...), rstd (...). next: x, residual,
  // weight[, bias]. d sum = layer_norm'(g[1]) + g[0] flows unchanged into x and residual.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const bool has_bias = next.size() == 4;
    LayerNormGrads r = layer_norm_backward_any(g[1], saved[0], saved[1], saved[2], saved[3], g[0],
                                               wants(0) || wants(1), wants(2), has_bias && wants(3),
                                               &next[2], has_bias ? &next[3] : nullptr);
    std::vector<Tensor> out = {wants(0) ? r.dx : Tensor(), wants(1) ? r.dx : Tensor(), r.dw};
    if (has_bias) out.push_back(r.db);
    return out;
  }
};

// Outputs: 0 through (an alias of x), 1 layer_norm(x). next: x, weight[, bias].
class LayerNormSkipNode final : public Node {
 public:
  const char* name() const override { return "LayerNormSkip"; }
  // saved: x (..., C) detached, weight (C), mean (...), rstd (...). d x = g[0] + layer_norm'(g[1]).
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const bool has_bias = next.size() == 3, cuda = saved[0].device().is_cuda();
    LayerNormGrads r = layer_norm_backward_any(
        g[1], saved[0], saved[1], saved[2], saved[3], cuda ? g[0] : Tensor(), wants(0), wants(1),
        has_bias && wants(2), &next[1], has_bias ? &next[2] : nullptr);
    if (wants(0) && !cuda) {
      NoGradGuard ng;
      r.dx = add(r.dx, g[0]);
    }
    if (has_bias) return {r.dx, r.dw, r.db};
    return {r.dx, r.dw};
  }
};

void check_args(const char* op, const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  ops::check_float_arg(op, "x", x);
  ops::check_float_arg(op, "weight", w);
  ops::check_like(op, "weight", w, "x", x);
  KILN_CHECK(x.dim() >= 1) << op << ": x must have at least 1 dim (..., C), got " << x.str();
  KILN_CHECK(w.dim() == 1 && w.size(0) == x.size(-1))
      << op << ": weight must have shape [" << x.size(-1) << "] (the last dim of x " << x.str()
      << "), got " << w.str();
  if (b.defined()) {
    ops::check_float_arg(op, "bias", b);
    ops::check_like(op, "bias", b, "x", x);
    KILN_CHECK(b.dim() == 1 && b.size(0) == x.size(-1))
        << op << ": bias must have shape [" << x.size(-1) << "] (the last dim of x " << x.str()
        << "), got " << b.str();
  }
  KILN_CHECK(eps >= 0) << op << ": eps must be >= 0, got " << eps;
}

// The forward on either device (no autograd): y, and the mean and rstd its backward needs.
LayerNormOut layer_norm_any(const char* op, const Tensor& x, const Tensor& weight,
                            const Tensor& bias, double eps) {
  LayerNormOut o;
  if (ops::on_cuda(op, "x", x)) {
#if KILN_WITH_CUDA
    cuda::layer_norm_forward(x, Tensor(), weight, bias, eps, &o.y, nullptr, &o.mean, &o.rstd);
#endif
  } else {
    o = layer_norm_cpu(x, weight, bias, eps);
  }
  return o;
}

}  // namespace

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_args(kOp, x, weight, bias, eps);
  LayerNormOut o = layer_norm_any(kOp, x, weight, bias, eps);
  auto n = bias.defined() ? record<LayerNormNode>({&x, &weight, &bias})
                          : record<LayerNormNode>({&x, &weight});
  if (n) {
    n->saved = {x, weight, o.mean, o.rstd};
    set_history(o.y, n);
  }
  return o.y;
}

std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual_in,
                                         const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "add_layer_norm";
  check_args(op, x, weight, bias, eps);
  ops::check_float_arg(op, "residual_in", residual_in);
  ops::check_like(op, "residual_in", residual_in, "x", x);
  KILN_CHECK(residual_in.shape() == x.shape())
      << op << ": residual_in " << residual_in.str() << " must have the shape of x " << x.str();
  if (!ops::on_cuda(op, "x", x)) {
    Tensor sum = add(x, residual_in);
    return {sum, layer_norm(sum, weight, bias, eps)};
  }
  Tensor y, sum, mean, rstd;
#if KILN_WITH_CUDA
  cuda::layer_norm_forward(x, residual_in, weight, bias, eps, &y, &sum, &mean, &rstd);
#endif
  auto n = bias.defined() ? record<AddLayerNormNode>({&x, &residual_in, &weight, &bias})
                          : record<AddLayerNormNode>({&x, &residual_in, &weight});
  if (n) {
    n->saved = {sum.detach(), weight, mean, rstd};
    set_history(sum, n, 0);
    set_history(y, n, 1);
  }
  return {sum, y};
}

std::pair<Tensor, Tensor> layer_norm_with_skip(const Tensor& x, const Tensor& weight,
                                               const Tensor& bias, double eps) {
  const char* op = "layer_norm_with_skip";
  check_args(op, x, weight, bias, eps);
  LayerNormOut o = layer_norm_any(op, x, weight, bias, eps);
  auto n = bias.defined() ? record<LayerNormSkipNode>({&x, &weight, &bias})
                          : record<LayerNormSkipNode>({&x, &weight});
  if (!n) return {x, o.y};
  Tensor through = x.detach();
  n->saved = {x.detach(), weight, o.mean, o.rstd};  // not `through` (a cycle)
  set_history(through, n, 0);
  set_history(o.y, n, 1);
  return {through, o.y};
}

}  // namespace kiln
