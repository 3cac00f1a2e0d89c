// Rotary position embedding (RoPE) in Llama's layout, applied to queries and keys before attention.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// Rotates each head vector of x by its position, Llama / Hugging Face LlamaRotaryEmbedding style
// ("rotate_half": element i is paired with element i + D/2, not with its neighbour 2i + 1):
//   for i in [0, D/2), position p = position_offset + t, angle a = p * theta^(-2i / D):
//     out[i]       = x[i] cos(a) - x[i + D/2] sin(a)
//     out[i + D/2] = x[i + D/2] cos(a) + x[i] sin(a)
// x: (B, H, T, D), D even. Returns (B, H, T, D) in x's dtype. Angles, cos and sin are computed in
// f64 and applied in f32 (f64 for f64 inputs). The backward is the inverse rotation.
// REQUIRES: x is floating; theta > 0; position_offset >= 0. CPU or CUDA (core/ops/rope.cu).
Tensor rotary_embedding(const Tensor& x, double theta = 10000.0, int64_t position_offset = 0);

// Whether the backward writes the gradient of a heads-inner x (H's stride below T's, as in
// split_heads' view of a (B, T, H * D) projection) in that (B, T, H, D) memory order, returned as
// a (B, H, T, D) view: split_heads' backward is then a view instead of a strided copy. The values
// are the same either way. CPU: on. CUDA: on with KILN_ROPE_GRAD_BTHD=1 (read once; off by
// default until a GPU has run its tests and timed it).
bool rope_grad_follows_input_layout(const Device& device);
// Tests: forces the choice above on both devices (1 on, 0 off); -1 restores it.
void set_rope_grad_layout_override(int on);

}  // namespace kiln
