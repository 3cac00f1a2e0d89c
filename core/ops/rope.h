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

// The attention inputs of a packed (B, T, (H + 2 Hkv) D) q / k / v projection (Llama's fused
// projection): q = heads [0, H) rotated, k = heads [H, H + Hkv) rotated, both (B, H, T, D)
// contiguous; v = heads [H + Hkv, H + 2 Hkv) as a (B, Hkv, T, D) view of a contiguous
// (B, T, Hkv * D) copy (so that attention, which saves v, does not keep the packed buffer alive).
// The same values as splitting the projection, split_heads and rotary_embedding, but one backward
// node writes the three gradients straight into one packed (B, T, W) gradient (q and k rotated
// back into their columns, v copied into its own) instead of the split's concatenation and the
// strided copies of split_heads' backward. REQUIRES: qkv (B, T, W) floating, heads > 0,
// kv_heads > 0, W divisible by heads + 2 kv_heads into an even head dim; as rotary_embedding.
struct QkvHeads {
  Tensor q;  // (B, H, T, D)
  Tensor k;  // (B, Hkv, T, D)
  Tensor v;  // (B, Hkv, T, D)
};
QkvHeads rope_qkv_packed(const Tensor& qkv, int64_t heads, int64_t kv_heads, double theta,
                         int64_t position_offset = 0);

// Whether the backward writes the gradient of a heads-inner x (H's stride below T's, as in
// split_heads' view of a (B, T, H * D) projection) in that (B, T, H, D) memory order, returned as
// a (B, H, T, D) view: split_heads' backward is then a view instead of a strided copy. The values
// are the same either way. CPU: on. CUDA: on unless KILN_ROPE_GRAD_BTHD=0 (read once; on by
// default since its GPU tests passed and Llama 1B measured faster, 2026-12-06).
bool rope_grad_follows_input_layout(const Device& device);
// Tests: forces the choice above on both devices (1 on, 0 off); -1 restores it.
void set_rope_grad_layout_override(int on);

}  // namespace kiln
