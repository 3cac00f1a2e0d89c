// Tensor parallelism applied to a built model from outside, through its plan (parallel/tp_plan.h,
// Megatron-LM's layout): every parameter with a splitting TpEntry is replaced, in place and under
// the same name, by exactly tp_slice(full, entry, tp, tp_rank) (checkpoints rely on this);
// replicated ones stay whole. Then hooks make the layers communicate:
//   column-parallel linears (q/k/v, GPT-2's fused c_attn, MLP up/gate): copy_to_tp on the input
//     (all-gather of the sequence under sequence parallel), once per module for the linears that
//     share an input (Llama's q, k, v; gate and up);
//   row-parallel linears (attention output, MLP down): reduce_from_tp on the partial product
//     (reduce-scatter to the sequence under sequence parallel), the bias added once after it;
//   vocab-parallel embedding and classifier + cross-entropy (the full logits never gathered for
//     the loss; forward() gathers them for evaluation and sampling).
// Attention reads its local head counts from the sliced weights' shapes.
#pragma once

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "parallel/shardable.h"

namespace kiln::parallel {

struct TensorParallelOptions {
  // Norms and dropout on this rank's chunk of the sequence (dim 1 of (B, T, C)); the norms'
  // gradients are summed over tp.
  bool sequence_parallel = false;
};

// `tp` is the tensor-parallel group (Mesh::tp()); it must outlive the model. With tp.size() == 1
// nothing changes. Errors (naming the parameter) when a split dimension does not divide by tp.
absl::Status apply_tensor_parallel(Shardable& model, Communicator& tp,
                                   const TensorParallelOptions& opts = {});

}  // namespace kiln::parallel
