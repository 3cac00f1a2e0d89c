// Elementwise arithmetic with NumPy broadcasting: add, sub, mul, scale; sum_to (the broadcast
// reduction their backward needs); and in-place add_ for gradient accumulation (no autograd).
#pragma once

#include "core/tensor.h"

namespace kiln {

// Broadcast result shape of a and b, or a kiln::Error naming `op` and both shapes.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);

Tensor add(const Tensor& a, const Tensor& b);  // a + b, broadcasting; same dtype and device
Tensor sub(const Tensor& a, const Tensor& b);  // a - b
Tensor mul(const Tensor& a, const Tensor& b);  // a * b
Tensor scale(const Tensor& a, double s);       // a * s
Tensor add_scalar(const Tensor& a, double s);  // a + s

// Sums x over broadcast dimensions down to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& x, const Shape& shape);

// dst += alpha * src in place, without autograd. REQUIRES: same shape; any dtypes.
void add_(const Tensor& dst, const Tensor& src, double alpha = 1.0);
// dst *= s in place, without autograd.
void mul_(const Tensor& dst, double s);
// Sum of squares of all elements, accumulated in f64 (no autograd).
double sum_squares(const Tensor& x);

}  // namespace kiln
