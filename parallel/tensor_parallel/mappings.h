// Tensor-parallel communication as conjugate autograd pairs (Megatron-LM's mappings): each op's
// backward is its partner's forward, so a column-parallel layer and the row-parallel layer after
// it exchange exactly one collective each way.
//   copy_to_tp                  identity                  | all-reduce (sum) of the gradient
//   reduce_from_tp              all-reduce (sum)          | identity
//   gather_from_sequence        all-gather along dim      | reduce-scatter along dim
//   reduce_scatter_to_sequence  reduce-scatter along dim  | all-gather along dim
//   scatter_to_sequence         keep this rank's chunk    | all-gather along dim
//   gather_from_tp              all-gather along dim      | keep this rank's chunk
// "Along dim" means rank r holds chunk r of `dim` (the sequence for sequence parallel, the
// vocabulary for gathered logits). Every op is differentiable and communicates over `tp` only.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel::tp {

// Column-parallel input: x unchanged; backward all-reduces the gradient over tp.
Tensor copy_to_tp(const Tensor& x, Communicator& tp);
// Row-parallel output: the sum of every rank's x; backward passes the gradient through.
Tensor reduce_from_tp(const Tensor& x, Communicator& tp);
// x (..., n, ...) with n at `dim` -> (..., tp * n, ...): rank r's x lands in chunk r.
// Backward: reduce-scatter (sum) of the gradient along dim.
Tensor gather_from_sequence(const Tensor& x, int64_t dim, Communicator& tp);
// x (..., tp * n, ...) -> (..., n, ...): chunk `rank` of the sum over tp.
// Backward: all-gather of the gradient along dim. REQUIRES: x.size(dim) % tp.size() == 0.
Tensor reduce_scatter_to_sequence(const Tensor& x, int64_t dim, Communicator& tp);
// x (..., tp * n, ...) -> its chunk `rank` along dim (no communication).
// Backward: all-gather of the gradient. REQUIRES: x.size(dim) % tp.size() == 0.
Tensor scatter_to_sequence(const Tensor& x, int64_t dim, Communicator& tp);
// x (..., n, ...) -> (..., tp * n, ...) all-gathered along dim; backward keeps this rank's chunk
// of the gradient (the output is used whole on every rank: vocab-parallel logits).
Tensor gather_from_tp(const Tensor& x, int64_t dim, Communicator& tp);

// The raw collectives along a dimension, without autograd (the ops above and the tests use them).
Tensor all_gather_dim(const Tensor& x, int64_t dim, Communicator& tp);
Tensor reduce_scatter_dim(const Tensor& x, int64_t dim, Communicator& tp);
Tensor all_reduce_copy(const Tensor& x, Communicator& tp);
Tensor chunk_of(const Tensor& x, int64_t dim, Communicator& tp);

}  // namespace kiln::parallel::tp
