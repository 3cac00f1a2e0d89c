// RMS normalisation over the last dim (Llama): y = x / sqrt(mean(x^2) + eps) * weight.
// The mean square accumulates in f64; bf16 / f16 inputs compute in f32.
#pragma once

#include "core/tensor.h"

namespace kiln {

// x: (..., C), weight: (C); the same floating dtype and device. Returns (..., C) in x's dtype.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps = 1e-6);

}  // namespace kiln
