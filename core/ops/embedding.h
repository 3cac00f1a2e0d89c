// Token embedding lookup: rows of a (V, C) table gathered by integer ids. The backward pass
// scatters into dW deterministically (no atomics: parallel over channel ranges, ids in order).
#pragma once

#include "core/tensor.h"

namespace kiln {

// weight: (V, C) floating; ids: any shape (...), integer (i32, i64 or u16), every id in [0, V),
// on weight's device. Returns (..., C) in weight's dtype.
Tensor embedding(const Tensor& weight, const Tensor& ids);

}  // namespace kiln
