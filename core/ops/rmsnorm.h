// RMS normalisation over the last dim (Llama): y = x / sqrt(mean(x^2) + eps) * weight.
// The mean square accumulates in f64 on the CPU (f32 on CUDA, f64 for f64 inputs); bf16 / f16
// inputs compute in f32.
#pragma once

#include <utility>

#include "core/tensor.h"

namespace kiln {

// x: (..., C), weight: (C); the same floating dtype and device. Returns (..., C) in x's dtype.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);

// The pre-norm residual step fused: sum = x + residual_in (rounded to x's dtype), then
// y = rms_norm(sum, weight, eps). Returns {sum, y}: sum is the new residual stream, y the
// normalised input of the next sub-layer; both are differentiable. On CUDA one kernel computes
// both; on the CPU it is add() followed by rms_norm().
// x, residual_in: (..., C), the same shape, dtype and device; weight as for rms_norm.
std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual_in,
                                       const Tensor& weight, double eps = 1e-6);

// The first norm of a pre-norm block together with the block input's skip path: returns
// {through, y} with through an alias of x (the same storage, differentiable: the identity) and
// y = rms_norm(x, weight, eps). Backward gives x one gradient, d through + rms_norm'(d y), in one
// pass: on CUDA the norm backward kernel adds d through into dx (as add_rms_norm's residual), on
// the CPU the norm backward is followed by an add (the bits of autograd summing the two uses).
// Shapes as rms_norm.
std::pair<Tensor, Tensor> rms_norm_with_skip(const Tensor& x, const Tensor& weight,
                                             double eps = 1e-6);

}  // namespace kiln
