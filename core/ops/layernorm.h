// Layer normalisation over the last dim (GPT-2): y = (x - mean) / sqrt(var + eps) * weight + bias,
// with the biased variance. Statistics accumulate in f64 on the CPU (f32 on CUDA, f64 for f64
// inputs); bf16 / f16 inputs compute in f32.
#pragma once

#include <utility>

#include "core/tensor.h"

namespace kiln {

// x: (..., C), weight: (C), bias: (C) or undefined; all the same floating dtype and device.
// Returns (..., C) in x's dtype.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                  double eps = 1e-5);

// The pre-norm residual step fused: sum = x + residual_in (rounded to x's dtype), then
// y = layer_norm(sum, weight, bias, eps). Returns {sum, y}: sum is the new residual stream, y the
// normalised input of the next sub-layer; both are differentiable. On CUDA one kernel computes
// both; on the CPU it is add() followed by layer_norm().
// x, residual_in: (..., C), the same shape, dtype and device; weight, bias as for layer_norm.
std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual_in,
                                         const Tensor& weight, const Tensor& bias = Tensor(),
                                         double eps = 1e-5);

// The first norm of a pre-norm block together with the block input's skip path: returns
// {through, y} with through an alias of x (the same storage, differentiable: the identity) and
// y = layer_norm(x, weight, bias, eps). Backward gives x one gradient, d through +
// layer_norm'(d y), in one pass (as rms_norm_with_skip, core/ops/rmsnorm.h). Shapes as layer_norm.
std::pair<Tensor, Tensor> layer_norm_with_skip(const Tensor& x, const Tensor& weight,
                                               const Tensor& bias = Tensor(), double eps = 1e-5);

}  // namespace kiln
