// rms_norm: forward, backward and the CPU kernels. Forward saves the per-row 1/rms (in f32, or
// f64 for f64 inputs) for backward.
#include "core/ops/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/op_util.h"
#include "core/parallel.h"

namespace kiln {
namespace {

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

class RmsNormNode final : public Node {
 public:
  const char* name() const override { return "RmsNorm"; }
  // saved: x (..., C), weight (C), rstd (...). next: x, weight.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    auto [dx, dw] = rms_norm_backward_cpu(g[0], saved[0], saved[1], saved[2], next[0].fn != nullptr,
                                          next[1].fn != nullptr);
    return {dx, dw};
  }
};

void check_args(const Tensor& x, const Tensor& w, double eps) {
  const char* op = "rms_norm";
  ops::check_float_arg(op, "x", x);
  ops::check_float_arg(op, "weight", w);
  ops::check_like(op, "weight", w, "x", x);
  KILN_CHECK(x.dim() >= 1) << op << ": x must have at least 1 dim (..., C), got " << x.str();
  KILN_CHECK(w.dim() == 1 && w.size(0) == x.size(-1))
      << op << ": weight must have shape [" << x.size(-1) << "] (the last dim of x " << x.str()
      << "), got " << w.str();
  KILN_CHECK(eps >= 0) << op << ": eps must be >= 0, got " << eps;
  ops::check_cpu(op, "x", x);
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_args(x, weight, eps);
  auto [y, rstd] = rms_norm_cpu(x, weight, eps);
  if (auto n = record<RmsNormNode>({&x, &weight})) {
    n->saved = {x, weight, rstd};
    set_history(y, n);
  }
  return y;
}

}  // namespace kiln
