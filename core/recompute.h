// Activation recompute: checkpoint(fn, inputs) runs fn without recording the tape, keeping only its
// inputs, and re-runs it during backward to get the gradients. Parameters fn reads (leaves
// requiring grad) are found while it runs and become inputs of the checkpoint node, so their
// gradients flow through the outer backward: accumulation order and grad-ready hooks are the same
// as without recompute, and gradients are bit-identical. The generator's state is saved and
// replayed, so dropout inside fn draws the same mask twice; ops whose results depend on run state
// that fn's first run advances (fp8 delayed scaling's amax histories) record what they used in the
// region's RecomputeLog and read it back in the recomputation.
#pragma once

#include <functional>
#include <vector>

#include "core/random.h"
#include "core/tensor.h"

namespace kiln {

using RecomputeFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;

// What ops inside a recompute region keep from fn's first run for its recomputation, in the order
// they ran: fn's first run appends (replaying false), the recomputation reads them back in the
// same order (replaying true, from next = 0).
struct RecomputeLog {
  std::vector<Tensor> tensors;
  size_t next = 0;
  bool replaying = false;
};
// The log of the recompute region this thread is running fn of, or null outside one.
RecomputeLog* recompute_log();

// `rng` is the generator fn draws from (dropout); its state is replayed in the recomputation.
// Null means default_generator().
std::vector<Tensor> checkpoint(const RecomputeFn& fn, const std::vector<Tensor>& inputs,
                               Generator* rng = nullptr);

// Convenience for a single input and output.
Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input,
                  Generator* rng = nullptr);

}  // namespace kiln
