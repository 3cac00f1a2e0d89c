// Matrix products: matmul (batched, with transpose flags so backward never materialises a
// transpose) and linear (x W^T + b, PyTorch's weight layout). CPU GEMMs go through OpenBLAS.
#pragma once

#include "core/tensor.h"

namespace kiln {

// op(a) @ op(b) where op transposes the last two dims when the flag is set.
// a: (..., M, K) (or (..., K, M) with trans_a); b: (K, N) shared across the batch, or (..., K, N)
// with the same leading dims as a (or (..., N, K) with trans_b). Result: (..., M, N).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// x: (..., IN), w: (OUT, IN), b: (OUT) or undefined. Result: (..., OUT).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

namespace raw {
// c = alpha * op(a) @ op(b) + beta * c for contiguous f32/f64 2-D operands (row-major).
// REQUIRES: a, b, c are CPU, contiguous, the same compute dtype, and the shapes agree.
void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
          double alpha = 1.0, double beta = 0.0);
}  // namespace raw

}  // namespace kiln
