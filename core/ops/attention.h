// Causal scaled dot-product attention with grouped-query heads (GQA / MQA / MHA), the fused op
// every transformer block calls. The forward keeps only the log-sum-exp of each score row; the
// backward recomputes the probabilities from it (flash-attention style), so no (T, T) probability
// matrix is stored between forward and backward.
#pragma once

#include <optional>

#include "core/tensor.h"

namespace kiln {

// softmax(scale * q k^T + causal mask) v, per (batch, query head).
//   q: (B, Hq, T, D); k, v: (B, Hkv, T, D) with Hq % Hkv == 0. Query head h reads kv head
//   h / (Hq / Hkv). Position t attends to positions <= t.
//   scale: defaults to 1 / sqrt(D).
// Returns (B, Hq, T, D) in q's dtype (computed in f32, or f64 for f64 inputs). Differentiable in
// q, k and v; the gradients of k and v are summed over the query heads that share them.
// On CUDA: bf16 and f16 through cuDNN's fused attention when it serves the shape, else (and for
// f32) the kiln kernel, D <= 256; KILN_ATTENTION=cudnn|kiln forces one. The lse is kept in f32.
// REQUIRES: q, k, v are floating, of one dtype, on one device (f64: CPU only); D > 0.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        std::optional<double> scale = std::nullopt);

}  // namespace kiln
