// Softmax cross-entropy over a vocabulary: the language-model loss.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// mean over rows i with targets[i] != ignore_index of -log softmax(logits[i])[targets[i]].
// logits: (N, V) floating; targets: (N) i32 or i64. Returns a 0-dim tensor in logits' dtype
// (computed in f32, or f64 for f64 logits); 0 when every target is ignored. Differentiable in
// logits; ignored rows get a zero gradient.
// REQUIRES: each target is in [0, V) or equals ignore_index; tensors on the CPU (no CUDA kernel
// yet).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);

}  // namespace kiln
