// softmax and log_softmax along one dim, numerically stable (the max is subtracted before exp;
// the normaliser accumulates in f64). bf16 / f16 inputs compute in f32.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {

// x: any shape, floating; dim may be negative. Returns x's shape and dtype.
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

}  // namespace kiln
