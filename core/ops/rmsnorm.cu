// CUDA halves of rms_norm and add_rms_norm (core/ops/rmsnorm.cc): host launchers over the shared
// normalisation kernels of core/ops/norm_kernels.cuh. Launch shapes: forward and dx one block of
// row_threads(C) threads per row (grid-stride over rows); dW (32 x 8)-thread blocks over (C/32
// column tiles) x (row chunks), then one thread per column.
#include "core/backend.h"
#include "core/ops/norm_kernels.cuh"

namespace kiln::cuda {
namespace {
constexpr const char* kOp = "rms_norm";
}  // namespace

// x (..., C); residual (..., C) or undefined; w (C). Outputs: y (..., C), sum = x + residual (only
// with a residual), rstd (...) in f32 (f64 for f64 x).
void rms_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& w, double eps,
                      Tensor* y, Tensor* sum, Tensor* rstd) {
  check_on_current_device(kOp, "x", x);
  Tensor rc = residual.defined() ? raw::contiguous(residual) : Tensor();
  norm::ForwardOut o =
      norm::forward<true>(kOp, raw::contiguous(x), rc, raw::contiguous(w), Tensor(), eps);
  *y = o.y;
  if (sum != nullptr) *sum = o.sum;
  *rstd = o.rstd;
}

// Gradients of rms_norm at x (what was normalised) given gy; gres (or undefined) is added into dx.
// Each output is left undefined unless asked for.
void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const Tensor& gres, bool want_dx, bool want_dw, Tensor* dx, Tensor* dw) {
  check_on_current_device(kOp, "grad", gy);
  Tensor gc = raw::convert(gy, x.dtype());
  Tensor rc = gres.defined() ? raw::convert(gres, x.dtype()) : Tensor();
  norm::Grads g = norm::backward<true>(kOp, gc, raw::contiguous(x), raw::contiguous(w), Tensor(),
                                       rstd, rc, want_dx, want_dw, false);
  *dx = g.dx;
  *dw = g.dw;
}

}  // namespace kiln::cuda
