// Vocab-parallel embedding and classifier + cross-entropy (Megatron-LM's VocabParallelEmbedding
// and vocab_parallel_cross_entropy): rank r of the tp group holds rows [r * V/tp, (r + 1) * V/tp)
// of the (V, C) embedding / classifier weight. The full (N, V) logits are never gathered: the
// loss needs only each row's max, sum of exponentials and target logit, summed over tp.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel::tp {

// weight: (V/tp, C), this rank's rows; ids: (...) integer tokens of the whole vocabulary.
// Ids outside this rank's rows look up zeros; the partial results are all-reduced (sum) over tp
// (reduce_from_tp), so every rank gets the full (..., C) embedding. Differentiable in weight.
Tensor vocab_parallel_embedding(const Tensor& weight, const Tensor& ids, Communicator& tp);

// mean over rows i with targets[i] != ignore_index of -log softmax(x W^T)[i, targets[i]], where
// W is the whole (V, C) classifier and this rank holds `weight` = its rows (V/tp, C). x: (N, C),
// the same on every rank (its gradient is partial: the caller passes it through copy_to_tp or
// gather_from_sequence, whose backward sums it over tp). targets: (N) ids of the whole vocabulary.
// Three collectives: the row maxima (max), then the sums of exponentials with the target logits
// (sum, one buffer); backward needs none. Returns a 0-dim f32 tensor (f64 for f64 inputs), equal
// on every rank; differentiable in x and weight. REQUIRES each target in [0, V) or ignore_index.
Tensor vocab_parallel_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                                    Communicator& tp, int64_t ignore_index = -100);

}  // namespace kiln::parallel::tp
