// Activations: GELU (tanh approximation, as GPT-2), SiLU, and SwiGLU (Llama's gated MLP), also on
// one packed gate|up tensor (the output of one fused gate/up GEMM). bf16 /
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
// swiglu on a packed input: gu (..., 2F) -> (..., F) = silu(gu[..., :F]) * gu[..., F:]. The same
// per-element arithmetic as swiglu on the two halves (bit-identical results, forward and
// backward); the backward writes d gu (..., 2F) in one buffer (no concatenation of two gradients).
// REQUIRES: gu floating with at least one dim, its last dim even.
Tensor swiglu_packed(const Tensor& gu);

}  // namespace kiln
