// Sums and means over all elements (to a 0-dim tensor) or over one dim. The summation order is
// fixed, so results never depend on the thread count; f32 / bf16 / f16 inputs accumulate in f64
// and the result is rounded to the input dtype.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// x: any shape, floating. Returns a 0-dim tensor of x's dtype.
Tensor sum(const Tensor& x);
// x: (..., N, ...) with N at `dim` (negative counts from the end). Returns x's shape without dim
// (keepdim = false) or with dim of size 1 (keepdim = true).
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
// Like sum, divided by the number of elements reduced (NaN when that number is 0).
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);

}  // namespace kiln
