// rms_norm and add_rms_norm: forward, backward, the CPU kernels and the dispatch to the CUDA
// kernels (core/ops/rmsnorm.cu). Forward saves the per-row 1/rms (in f32, or f64 for f64 inputs)
// for backward.
#include "core/ops/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <tuple>
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
// core/ops/rmsnorm.cu. x (..., C), residual (..., C) or undefined, w (C). Outputs y, sum
// (= x + residual; only with a residual, pass null otherwise), rstd (...).
void rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& w, double eps,
                      Tensor* y, Tensor* sum, Tensor* rstd);
// Gradients at x (what was normalised) given gy; gres (or undefined) is added into dx.
// dw_into (an f32 .grad, or undefined) takes the weight gradient instead of *dw (written over when
// dw_over).
void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const Tensor& gres, bool want_dx, bool want_dw, Tensor* dx, Tensor* dw,
                       const Tensor& dw_into, bool dw_over);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

constexpr const char* kOp = "rms_norm";

int64_t row_grain(int64_t c) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(c, 1)); }

// Returns y (..., C) in x's dtype and rstd (...) in the compute dtype.
std::pair<Tensor, Tensor> rms_norm_cpu(const Tensor& x, const Tensor& w, double eps) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  Tensor xc = raw::to_compute(x), wc = raw::to_compute(w);
  Tensor y = Tensor::empty(x.shape(), xc.dtype());
  Tensor rstd = Tensor::empty(Shape(x.shape().begin(), x.shape().end() - 1), xc.dtype());
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    const T *px = xc.data<T>(), *pw = wc.data<T>();
    T *py = y.data<T>(), *pr = rstd.data<T>();
    parallel_for(rows, row_grain(c), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * c;
        double ss = 0;
        for (int64_t j = 0; j < c; ++j) ss += static_cast<double>(xr[j]) * xr[j];
        const T rs = static_cast<T>(1.0 / std::sqrt(ss / c + eps));
        pr[r] = rs;
        T* yr = py + r * c;
        for (int64_t j = 0; j < c; ++j) yr[j] = xr[j] * rs * pw[j];
      }
    });
  });
  return {raw::convert(y, x.dtype()), rstd};
}

// With h = x * rstd and gh = gy * w: dx = rstd * (gh - h * mean(gh * h)), dw = sum_rows gy * h.
// dw sums rows in order (parallel over channels), so it does not depend on the thread count.
std::pair<Tensor, Tensor> rms_norm_backward_cpu(const Tensor& gy, const Tensor& x, const Tensor& w,
                                                const Tensor& rstd, bool want_dx, bool want_dw) {
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  Tensor xc = raw::to_compute(x), wc = raw::to_compute(w), gc = raw::to_compute(gy);
  const DType ct = xc.dtype();
  Tensor dx = want_dx ? Tensor::empty(x.shape(), ct) : Tensor();
  Tensor dw = want_dw ? Tensor::empty({c}, ct) : Tensor();
  KILN_DISPATCH_FLOAT(ct, T, {
    const T *px = xc.data<T>(), *pw = wc.data<T>(), *pg = gc.data<T>(), *pr = rstd.data<T>();
    if (want_dx) {
      T* pdx = dx.data<T>();
      parallel_for(rows, row_grain(c), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T *xr = px + r * c, *gr = pg + r * c;
          const T rs = pr[r];
          double s = 0;
          for (int64_t j = 0; j < c; ++j) s += static_cast<double>(gr[j] * pw[j]) * (xr[j] * rs);
          const T mgh = static_cast<T>(s / c);
          T* dr = pdx + r * c;
          for (int64_t j = 0; j < c; ++j) dr[j] = rs * (gr[j] * pw[j] - xr[j] * rs * mgh);
        }
      });
    }
    if (want_dw) {
      T* pdw = dw.data<T>();
      parallel_for(c, 64, [&](int64_t c0, int64_t c1) {
        std::vector<double> acc(c1 - c0, 0.0);
        for (int64_t r = 0; r < rows; ++r) {
          const T *xr = px + r * c, *gr = pg + r * c;
          const T rs = pr[r];
          for (int64_t j = c0; j < c1; ++j) acc[j - c0] += gr[j] * (xr[j] * rs);
        }
        for (int64_t j = c0; j < c1; ++j) pdw[j] = static_cast<T>(acc[j - c0]);
      });
    }
  });
  return {want_dx ? raw::convert(dx, x.dtype()) : Tensor(),
          want_dw ? raw::convert(dw, w.dtype()) : Tensor()};
}

// Either device. gres (CUDA only; undefined on the CPU) is added into dx. On CUDA, with the
// weight's input edge we, the weight gradient goes straight into its f32 .grad where autograd
// offers it (ops::norm_grad_target), and the marker is returned for it.
std::pair<Tensor, Tensor> rms_norm_backward_any(const Tensor& gy, const Tensor& x, const Tensor& w,
                                                const Tensor& rstd, const Tensor& gres,
                                                bool want_dx, bool want_dw,
                                                const Edge* we = nullptr) {
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor dx, dw;
    bool over = false;
    const Tensor into = we ? ops::norm_grad_target(*we, want_dw, w, x, &over) : Tensor();
    cuda::rms_norm_backward(gy, x, w, rstd, gres, want_dx, want_dw && !into.defined(), &dx, &dw,
                            into, over);
    return {dx, ops::param_grad_or_marker(into, dw)};
  }
#else
  (void)we;
#endif
  KILN_CHECK(!gres.defined()) << "internal: rms_norm: residual gradient on the CPU path";
  return rms_norm_backward_cpu(gy, x, w, rstd, want_dx, want_dw);
}

class RmsNormNode final : public Node {
 public:
  const char* name() const override { return "RmsNorm"; }
  // saved: x (..., C), weight (C), rstd (...). next: x, weight.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    auto [dx, dw] = rms_norm_backward_any(g[0], saved[0], saved[1], saved[2], Tensor(), wants(0),
                                          wants(1), &next[1]);
    return {dx, dw};
  }
};

// The fused residual step (CUDA only: the CPU path composes add and rms_norm). Outputs: 0 the sum
// x + residual, 1 the normalised sum.
class AddRmsNormNode final : public Node {
 public:
  const char* name() const override { return "AddRmsNorm"; }
  // saved: sum (..., C) detached, weight (C), rstd (...). next: x, residual, weight.
  // d sum = rms_norm'(g[1]) + g[0] flows unchanged into x and residual.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    auto [dx, dw] = rms_norm_backward_any(g[1], saved[0], saved[1], saved[2], g[0],
                                          wants(0) || wants(1), wants(2), &next[2]);
    return {wants(0) ? dx : Tensor(), wants(1) ? dx : Tensor(), dw};
  }
};

// Outputs: 0 through (an alias of x), 1 rms_norm(x). next: x, weight.
class RmsNormSkipNode final : public Node {
 public:
  const char* name() const override { return "RmsNormSkip"; }
  // saved: x (..., C) detached, weight (C), rstd (...). d x = g[0] + rms_norm'(g[1]).
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const bool cuda = saved[0].device().is_cuda();
    auto [dx, dw] = rms_norm_backward_any(g[1], saved[0], saved[1], saved[2],
                                          cuda ? g[0] : Tensor(), wants(0), wants(1), &next[1]);
    if (wants(0) && !cuda) {
      NoGradGuard ng;
      dx = add(dx, g[0]);
    }
    return {dx, dw};
  }
};

void check_args(const char* op, const Tensor& x, const Tensor& w, double eps) {
  ops::check_float_arg(op, "x", x);
  ops::check_float_arg(op, "weight", w);
  ops::check_like(op, "weight", w, "x", x);
  KILN_CHECK(x.dim() >= 1) << op << ": x must have at least 1 dim (..., C), got " << x.str();
  KILN_CHECK(w.dim() == 1 && w.size(0) == x.size(-1))
      << op << ": weight must have shape [" << x.size(-1) << "] (the last dim of x " << x.str()
      << "), got " << w.str();
  KILN_CHECK(eps >= 0) << op << ": eps must be >= 0, got " << eps;
}

// The forward on either device (no autograd): y and the rstd its backward needs.
std::pair<Tensor, Tensor> rms_norm_any(const char* op, const Tensor& x, const Tensor& weight,
                                       double eps) {
  Tensor y, rstd;
  if (ops::on_cuda(op, "x", x)) {
#if KILN_WITH_CUDA
    cuda::rms_norm_forward(x, Tensor(), weight, eps, &y, nullptr, &rstd);
#endif
  } else {
    std::tie(y, rstd) = rms_norm_cpu(x, weight, eps);
  }
  return {y, rstd};
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_args(kOp, x, weight, eps);
  auto [y, rstd] = rms_norm_any(kOp, x, weight, eps);
  if (auto n = record<RmsNormNode>({&x, &weight})) {
    n->saved = {x, weight, rstd};
    set_history(y, n);
  }
  return y;
}

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual_in,
                                       const Tensor& weight, double eps) {
  const char* op = "add_rms_norm";
  check_args(op, x, weight, eps);
  ops::check_float_arg(op, "residual_in", residual_in);
  ops::check_like(op, "residual_in", residual_in, "x", x);
  KILN_CHECK(residual_in.shape() == x.shape())
      << op << ": residual_in " << residual_in.str() << " must have the shape of x " << x.str();
  if (!ops::on_cuda(op, "x", x)) {
    Tensor sum = add(x, residual_in);
    return {sum, rms_norm(sum, weight, eps)};
  }
  Tensor y, sum, rstd;
#if KILN_WITH_CUDA
  cuda::rms_norm_forward(x, residual_in, weight, eps, &y, &sum, &rstd);
#endif
  if (auto n = record<AddRmsNormNode>({&x, &residual_in, &weight})) {
    n->saved = {sum.detach(), weight, rstd};
    set_history(sum, n, 0);
    set_history(y, n, 1);
  }
  return {sum, y};
}

std::pair<Tensor, Tensor> rms_norm_with_skip(const Tensor& x, const Tensor& weight, double eps) {
  const char* op = "rms_norm_with_skip";
  check_args(op, x, weight, eps);
  auto [y, rstd] = rms_norm_any(op, x, weight, eps);
  auto n = record<RmsNormSkipNode>({&x, &weight});
  if (!n) return {x, y};
  Tensor through = x.detach();
  n->saved = {x.detach(), weight, rstd};  // not `through`: the node would own its own output
  set_history(through, n, 0);
  set_history(y, n, 1);
  return {through, y};
}

}  // namespace kiln
