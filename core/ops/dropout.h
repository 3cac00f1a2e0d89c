// Dropout with a counter-based mask: reproducible from the generator state, so activation
// recompute replays exactly the mask the first forward drew.
#pragma once

#include "core/random.h"
#include "core/tensor.h"

namespace kiln {

// In training, zeroes each element of x with probability p and scales the kept ones by 1/(1-p).
// Element i (row-major over x's shape) is kept iff rng_uniform_f(gen.seed(), offset + i) >= p,
// where offset = gen.reserve(x.numel()) is taken once per call: the mask is a pure function of
// the generator state before the call. p == 0 or !training: returns x itself and draws nothing.
// Returns x's shape and dtype (computed in f32, or f64 for f64 inputs). The backward regenerates
// the mask from (seed, offset) instead of storing it.
// REQUIRES: 0 <= p < 1; x floating. On CUDA (core/ops/dropout.cu) the mask is the CPU's, bit for
// bit.
Tensor dropout(const Tensor& x, double p, Generator& gen = default_generator(),
               bool training = true);

}  // namespace kiln
