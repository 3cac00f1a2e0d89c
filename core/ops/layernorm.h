// Layer normalisation over the last dim (GPT-2): y = (x - mean) / sqrt(var + eps) * weight + bias,
// with the biased variance. Statistics accumulate in f64; bf16 / f16 inputs compute in f32.
#pragma once

#include "core/tensor.h"

namespace kiln {

// x: (..., C), weight: (C), bias: (C) or undefined; all the same floating dtype and device.
// Returns (..., C) in x's dtype.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                  double eps = 1e-5);

}  // namespace kiln
