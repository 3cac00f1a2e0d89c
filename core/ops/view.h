// Differentiable shape ops: views (reshape, transpose, permute, narrow, split) that share storage,
// and copies (contiguous, clone, concat, cast to a dtype, move to a device).
#pragma once

#include <vector>

#include "core/tensor.h"

namespace kiln {

struct Edge;

Tensor reshape(const Tensor& x, const Shape& shape);  // one -1 allowed; copies if non-contiguous
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// Dim `dim` of x seen as `sizes` (their product is x.size(dim)): always a view, whatever x's
// strides (reshape copies a non-contiguous x). Its backward merges the dims back as a view where
// the gradient's strides allow, else copies.
Tensor unflatten(const Tensor& x, int64_t dim, const std::vector<int64_t>& sizes);
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// concat, but when the pieces already lie side by side along dim in one storage and the whole is
// contiguous (e.g. adjacent parameter copies of an nn::PrecastScope), a view of them: no copy. The
// gradient is concat's (each piece its block of the output gradient, a view where that is
// contiguous). Callers must not write into the result.
Tensor concat_or_view(const std::vector<Tensor>& xs, int64_t dim);
// Direct accumulation through a concat (autograd's accumulation_target, one level up): when edge
// e leads to the node of a concat / concat_or_view along dim 0 and every piece's edge offers its
// f32 .grad (accumulation_target with the piece's shape, on `device`), those .grads in piece
// order; empty otherwise. A node that adds each row block of its gradient into them returns
// accumulated_marker() for e; the concat passes the marker on to every piece, whose leaves then
// fire their grad-ready hooks as for any gradient (the CUDA linear of a packed weight does this).
// With `overwrite`: (*overwrite)[i] says whether piece i's .grad was stale, to be written over
// (accumulation_target's claim, per piece).
std::vector<Tensor> concat_accumulation_targets(const Edge& e, Device device,
                                                std::vector<char>* overwrite = nullptr);
Tensor contiguous(const Tensor& x);
Tensor clone(const Tensor& x);
Tensor cast(const Tensor& x, DType dtype);  // gradient flows back in x's dtype
// cast(x, converted.dtype()) whose value was computed beforehand (`converted`, e.g. by
// nn::PrecastScope's one batched launch): no kernel, the same gradient as cast.
Tensor cast_precomputed(const Tensor& x, const Tensor& converted);
Tensor to_device(const Tensor& x, Device device);

}  // namespace kiln
