// CUDA halves of layer_norm and add_layer_norm (core/ops/layernorm.cc): host launchers over the
// shared normalisation kernels of core/ops/norm_kernels.cuh. Launch shapes: where a row fits a
// warp's registers (bf16 / f16 up to C = 2048, f32 up to 1024, C a multiple of 16 bytes, aligned
// tensors) forward one warp per row over a grid of resident 4-warp blocks, backward one 8-warp
// block per chunk of rows (dx and per-chunk dW/dB partials in one pass), then a (32 x 32)-thread
// block per 32 columns adds the partials; otherwise one block of row_threads(C) threads per row
// (forward, dx) and (32 x 8)-thread dW/dB partial blocks over (C/32 column tiles) x (row chunks).
// KILN_NORM_KERNEL=general forces the block-per-row kernels.
#include "core/backend.h"
#include "core/ops/norm_kernels.cuh"

namespace kiln::cuda {
namespace {
constexpr const char* kOp = "layer_norm";
}  // namespace

// x (..., C); residual (..., C) or undefined; w, b (C) (b may be undefined). Outputs: y (..., C),
// sum = x + residual (only with a residual), mean and rstd (...) in f32 (f64 for f64 x).
void layer_norm_forward(const Tensor& x, const Tensor& residual, const Tensor& w, const Tensor& b,
                        double eps, Tensor* y, Tensor* sum, Tensor* mean, Tensor* rstd) {
  check_on_current_device(kOp, "x", x);
  Tensor xc = raw::contiguous(x), wc = raw::contiguous(w);
  Tensor rc = residual.defined() ? raw::contiguous(residual) : Tensor();
  Tensor bc = b.defined() ? raw::contiguous(b) : Tensor();
  norm::ForwardOut o = norm::forward<false>(kOp, xc, rc, wc, bc, eps);
  *y = o.y;
  if (sum != nullptr) *sum = o.sum;
  *mean = o.mean;
  *rstd = o.rstd;
}

// Gradients of layer_norm at x (what was normalised) given gy; gres (or undefined) is added into
// dx. Each output is left undefined unless asked for; dw_into / db_into (f32 .grads, or undefined)
// take the weight / bias gradient instead (written over when *_over), leaving *dw / *db undefined.
void layer_norm_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Tensor& mean,
                         const Tensor& rstd, const Tensor& gres, bool want_dx, bool want_dw,
                         bool want_db, Tensor* dx, Tensor* dw, Tensor* db, const Tensor& dw_into,
                         bool dw_over, const Tensor& db_into, bool db_over) {
  check_on_current_device(kOp, "grad", gy);
  Tensor gc = raw::convert(gy, x.dtype());
  Tensor rc = gres.defined() ? raw::convert(gres, x.dtype()) : Tensor();
  norm::ParamTargets into;
  into.dw_into = dw_into;
  into.db_into = db_into;
  into.dw_over = dw_over;
  into.db_over = db_over;
  norm::Grads g = norm::backward<false>(kOp, gc, raw::contiguous(x), raw::contiguous(w), mean, rstd,
                                        rc, want_dx, want_dw, want_db, into);
  *dx = g.dx;
  *dw = g.dw;
  *db = g.db;
}

}  // namespace kiln::cuda
