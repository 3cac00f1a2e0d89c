// CUDA halves of rms_norm and add_rms_norm (core/ops/rmsnorm.cc): host launchers over the
// shared normalisation kernels of core/ops/norm_kernels.cuh. Launch shapes: where a row fits a
// warp's registers (bf16 / f16 up to C = 2048, f32 up to 1024, C a multiple of 16 bytes, aligned
// tensors) forward one warp per row over a grid of resident 4-warp blocks, backward one 8-warp
// block per chunk of rows (dx and per-chunk dW partials in one pass), then a (32 x 32)-thread
// block per 32 columns adds the partials; otherwise one block of row_threads(C) threads per row
// (forward, dx) and (32 x 8)-thread dW partial blocks over (C/32 column tiles) x (row chunks).
// KILN_NORM_KERNEL=general forces the block-per-row kernels.
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
// Each output is left undefined unless asked for; dw_into (an f32 .grad, or undefined) takes the
// weight gradient instead (written over when dw_over), leaving *dw undefined.
void rms_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                       const Tensor& gres, bool want_dx, bool want_dw, Tensor* dx, Tensor* dw,
                       const Tensor& dw_into, bool dw_over) {
  check_on_current_device(kOp, "grad", gy);
  Tensor gc = raw::convert(gy, x.dtype());
  Tensor rc = gres.defined() ? raw::convert(gres, x.dtype()) : Tensor();
  norm::ParamTargets into;
  into.dw_into = dw_into;
  into.dw_over = dw_over;
  norm::Grads g = norm::backward<true>(kOp, gc, raw::contiguous(x), raw::contiguous(w), Tensor(),
                                       rstd, rc, want_dx, want_dw, false, into);
  *dx = g.dx;
  *dw = g.dw;
}

}  // namespace kiln::cuda
