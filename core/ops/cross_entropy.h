// Softmax cross-entropy over a vocabulary: the language-model loss, alone and fused with the
// classifier that produces the logits.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// mean over rows i with targets[i] != ignore_index of -log softmax(logits[i])[targets[i]].
// logits: (N, V) floating; targets: (N) i32 or i64. Returns a 0-dim f32 tensor (f64 for f64
// logits: a bf16 loss would keep 3 significant digits)
// (computed in f32, or f64 for f64 logits); 0 when every target is ignored. Differentiable in
// logits; ignored rows get a zero gradient.
// REQUIRES: each target is in [0, V) or equals ignore_index (else a kiln::Error naming the row);
// logits and targets on one device (CPU, or CUDA: core/ops/cross_entropy.cu).
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100);

// cross_entropy(linear(x, weight), targets, ignore_index) without storing the (N, V) logits: on
// CUDA the logits are computed chunk_rows rows at a time, each chunk's loss and logit gradient
// are produced in one pass over a single chunk buffer, and the gradients of x and weight are
// accumulated from it at once (kept until backward, then scaled by the upstream gradient). On the
// CPU it is the composition itself. chunk_rows <= 0 picks about 256 MiB of logits per chunk.
// x: (N, C), weight: (V, C) (PyTorch's classifier layout), the same floating dtype and device;
// targets: (N) i32 or i64. Returns a 0-dim f32 tensor (f64 for f64 inputs); differentiable in x
// and weight.
Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index = -100, int64_t chunk_rows = 0);

}  // namespace kiln
