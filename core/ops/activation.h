// Activations: GELU (tanh approximation, as GPT-2), SiLU, and SwiGLU (Llama's gated MLP). bf16 /
// f16 inputs compute in f32 and round the result to the input dtype.
#pragma once

#include "core/tensor.h"

namespace kiln {

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Any shape, floating.
Tensor gelu(const Tensor& x);
// x * sigmoid(x). Any shape, floating.
Tensor silu(const Tensor& x);
// silu(gate) * up. gate, up: the same shape, dtype and device.
Tensor swiglu(const Tensor& gate, const Tensor& up);

}  // namespace kiln
