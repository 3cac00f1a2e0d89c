// Views and copies with their backward passes.
#include "core/ops/view.h"

#include <numeric>
#include <utility>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"

namespace kiln {
namespace {

Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = x.storage();
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = x.dtype();
  return Tensor(std::move(impl));
}

class ReshapeNode final : public Node {
 public:
  const char* name() const override { return "Reshape"; }
  Shape in_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {reshape(g[0], in_shape)};
  }
};

class PermuteNode final : public Node {
 public:
  const char* name() const override { return "Permute"; }
  std::vector<int64_t> inverse;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {permute(g[0], inverse)};
  }
};

class NarrowNode final : public Node {
 public:
  const char* name() const override { return "Narrow"; }
  Shape in_shape;
  int64_t dim = 0, start = 0;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor gx = Tensor::zeros(in_shape, g[0].dtype(), g[0].device());
    raw::copy(gx.narrow(dim, start, g[0].size(dim)), g[0]);
    return {gx};
  }
};

// split's outputs share one node: backward concatenates their gradients (zeros where an output got
// none) instead of scattering each into a zero tensor of the input's size and summing them.
// The tensor the pieces g form when laid side by side along dim, as a view of their common storage,
// when they already lie that way (each piece one stride step of dim after the previous, equal
// strides) and the whole is contiguous; undefined otherwise. Lets a producer that writes the
// gradients of a split's outputs into one buffer (the attention backward does, for GPT-2's packed
// q, k, v) hand that buffer on without the concatenation's copy.
Tensor adjacent_pieces(const std::vector<Tensor>& g, const Shape& in_shape, int64_t dim) {
  const Tensor& f = g[0];
  int64_t next = f.defined() ? f.offset() : 0;
  for (const Tensor& x : g) {
    if (!x.defined() || x.storage() != f.storage() || x.strides() != f.strides() ||
        x.dtype() != f.dtype() || x.dim() != f.dim() || x.offset() != next)
      return Tensor();
    next += x.size(dim) * x.strides()[dim];
  }
  Tensor whole = make_view(f, in_shape, f.strides(), f.offset());
  return whole.is_contiguous() ? whole : Tensor();
}

class SplitNode final : public Node {
 public:
  const char* name() const override { return "Split"; }
  int64_t dim = 0;
  Shape in_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    NoGradGuard ng;
    if (Tensor whole = adjacent_pieces(g, in_shape, dim); whole.defined()) return {whole};
    return {concat(g, dim)};
  }
};

// Merges dims [dim, dim + n) of g into one of size in_size: a view when g's strides allow it
// (each merged dim's stride = the next one's stride * size), else a copy.
Tensor flatten_dims(const Tensor& g, int64_t dim, int64_t n, const Shape& in_shape) {
  bool view = true;
  for (int64_t i = dim; i + 1 < dim + n; ++i)
    if (g.size(i) != 1 && g.strides()[i] != g.strides()[i + 1] * g.size(i + 1)) view = false;
  if (!view) return reshape(g, in_shape);
  Shape strides;
  for (int64_t i = 0; i < g.dim(); ++i) {
    if (i > dim && i < dim + n) continue;
    strides.push_back(i == dim ? g.strides()[dim + n - 1] : g.strides()[i]);
  }
  return make_view(g, in_shape, strides, g.offset());
}

class UnflattenNode final : public Node {
 public:
  const char* name() const override { return "Unflatten"; }
  Shape in_shape;
  int64_t dim = 0, n = 0;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    NoGradGuard ng;
    return {flatten_dims(g[0], dim, n, in_shape)};
  }
};

class ConcatNode final : public Node {
 public:
  const char* name() const override { return "Concat"; }
  std::vector<int64_t> sizes;
  int64_t dim = 0;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    // Every piece's block was added into its leaf's .grad already (concat_accumulation_targets).
    if (is_accumulated_marker(g[0])) return std::vector<Tensor>(sizes.size(), g[0]);
    std::vector<Tensor> out;
    int64_t start = 0;
    for (int64_t s : sizes) {
      out.push_back(raw::contiguous(g[0].narrow(dim, start, s)));
      start += s;
    }
    return out;
  }
};

class CopyNode final : public Node {  // contiguous / clone
 public:
  const char* name() const override { return "Copy"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {g[0]}; }
};

class CastNode final : public Node {
 public:
  const char* name() const override { return "Cast"; }
  DType in_dtype;
  Device in_device;
  bool forwards_to_leaf() const override {
    return in_dtype == DType::kF32 && !outputs.empty() && in_device == outputs[0].device &&
           next[0].fn && next[0].fn->converts_grad_dtype();
  }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    if (is_accumulated_marker(g[0])) return {g[0]};  // added into the leaf's .grad already
    // On the GPU a 16-bit gradient of an fp32 parameter goes on as it is: AccumulateGrad adds
    // it into .grad in one pass (one launch and one read of it fewer than converting here).
    const Edge& e = next[0];
    if (e.fn && e.fn->converts_grad_dtype() && g[0].device().is_cuda() &&
        in_device == g[0].device() && in_dtype == DType::kF32 &&
        (g[0].dtype() == DType::kBF16 || g[0].dtype() == DType::kF16))
      return {g[0]};
    Tensor gx = Tensor::empty(g[0].shape(), in_dtype, in_device);
    raw::copy(gx, g[0]);
    return {gx};
  }
};

// Checks concat's arguments; returns the wrapped dim and each piece's size along it.
int64_t concat_shape(const std::vector<Tensor>& xs, int64_t dim, std::vector<int64_t>* sizes) {
  KILN_CHECK(!xs.empty()) << "concat: no tensors";
  const Tensor& f = xs[0];
  check_defined("concat", {&f});
  const int64_t d = wrap_dim("concat", dim, f.dim());
  for (const Tensor& x : xs) {
    check_defined("concat", {&x});
    KILN_CHECK(x.dim() == f.dim() && x.dtype() == f.dtype() && x.device() == f.device())
        << "concat: " << x.str() << " does not match " << f.str();
    for (int64_t i = 0; i < f.dim(); ++i)
      KILN_CHECK(i == d || x.size(i) == f.size(i))
          << "concat: shapes " << shape_str(x.shape()) << " and " << shape_str(f.shape())
          << " differ outside dim " << d;
    sizes->push_back(x.size(d));
  }
  return d;
}

void record_concat(const std::vector<Tensor>& xs, Tensor& out, const std::vector<int64_t>& sizes,
                   int64_t d) {
  if (auto n = record<ConcatNode>(xs)) {
    n->sizes = sizes;
    n->dim = d;
    set_history(out, n);
  }
}

Tensor copy_to(const Tensor& x, DType dtype, Device device) {
  Tensor out = Tensor::empty(x.shape(), dtype, device);
  raw::copy(out, x);
  return out;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined("reshape", {&x});
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      KILN_CHECK(infer < 0) << "reshape: more than one -1 in " << shape_str(shape);
      infer = static_cast<int64_t>(i);
    } else {
      KILN_CHECK(s[i] >= 0) << "reshape: bad dimension in " << shape_str(shape);
      known *= s[i];
    }
  }
  if (infer >= 0) {
    KILN_CHECK(known > 0 && x.numel() % known == 0)
        << "reshape: cannot infer -1 reshaping " << x.str() << " to " << shape_str(shape);
    s[infer] = x.numel() / known;
  }
  KILN_CHECK(shape_numel(s) == x.numel())
      << "reshape: " << x.str() << " has " << x.numel() << " elements, " << shape_str(shape)
      << " needs " << shape_numel(s);
  Tensor base = x.is_contiguous() ? x : raw::contiguous(x);
  Tensor out = make_view(base, s, contiguous_strides(s), base.offset());
  if (auto n = record<ReshapeNode>({&x})) {
    n->in_shape = x.shape();
    set_history(out, n);
  }
  return out;
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  check_defined("permute", {&x});
  const int64_t nd = x.dim();
  KILN_CHECK(static_cast<int64_t>(dims.size()) == nd)
      << "permute: " << dims.size() << " dims given for " << x.str();
  std::vector<int64_t> inv(nd, -1);
  Shape shape(nd), strides(nd);
  for (int64_t i = 0; i < nd; ++i) {
    int64_t d = wrap_dim("permute", dims[i], nd);
    KILN_CHECK(inv[d] < 0) << "permute: dim " << d << " repeated";
    inv[d] = i;
    shape[i] = x.size(d);
    strides[i] = x.strides()[d];
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  if (auto n = record<PermuteNode>({&x})) {
    n->inverse = inv;
    set_history(out, n);
  }
  return out;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  check_defined("transpose", {&x});
  std::vector<int64_t> dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim("transpose", d0, x.dim())], dims[wrap_dim("transpose", d1, x.dim())]);
  return permute(x, dims);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  check_defined("narrow", {&x});
  int64_t d = wrap_dim("narrow", dim, x.dim());
  KILN_CHECK(start >= 0 && length >= 0 && start + length <= x.size(d))
      << "narrow: [" << start << ", " << start + length << ") out of range for dim " << d << " of "
      << x.str();
  Shape shape = x.shape();
  shape[d] = length;
  Tensor out = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  if (auto n = record<NarrowNode>({&x})) {
    n->in_shape = x.shape();
    n->dim = d;
    n->start = start;
    set_history(out, n);
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined("split", {&x});
  int64_t d = wrap_dim("split", dim, x.dim());
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  KILN_CHECK(total == x.size(d)) << "split: sizes sum to " << total << " but dim " << d << " of "
                                 << x.str() << " is " << x.size(d);
  std::vector<Tensor> out;
  int64_t start = 0;
  {
    NoGradGuard ng;  // plain views; the single SplitNode below carries the gradient
    for (int64_t s : sizes) {
      out.push_back(narrow(x, d, start, s).detach());
      start += s;
    }
  }
  if (auto n = record<SplitNode>({&x})) {
    n->dim = d;
    n->in_shape = x.shape();
    for (size_t i = 0; i < out.size(); ++i) set_history(out[i], n, static_cast<int>(i));
  }
  return out;
}

Tensor unflatten(const Tensor& x, int64_t dim, const std::vector<int64_t>& sizes) {
  check_defined("unflatten", {&x});
  const int64_t d = wrap_dim("unflatten", dim, x.dim());
  int64_t prod = 1;
  for (int64_t s : sizes) {
    KILN_CHECK(s >= 0) << "unflatten: bad size in " << shape_str(sizes);
    prod *= s;
  }
  KILN_CHECK(!sizes.empty() && prod == x.size(d))
      << "unflatten: " << shape_str(sizes) << " does not split dim " << d << " of " << x.str();
  Shape shape, strides;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != d) {
      shape.push_back(x.size(i));
      strides.push_back(x.strides()[i]);
      continue;
    }
    int64_t st = x.strides()[d] * prod;
    for (int64_t s : sizes) {
      st = s > 0 ? st / s : st;
      shape.push_back(s);
      strides.push_back(st);
    }
  }
  Tensor out = make_view(x, shape, strides, x.offset());
  if (auto n = record<UnflattenNode>({&x})) {
    n->in_shape = x.shape();
    n->dim = d;
    n->n = static_cast<int64_t>(sizes.size());
    set_history(out, n);
  }
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  std::vector<int64_t> sizes;
  const int64_t d = concat_shape(xs, dim, &sizes);
  Shape shape = xs[0].shape();
  shape[d] = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  Tensor out = Tensor::empty(shape, xs[0].dtype(), xs[0].device());
  int64_t start = 0;
  for (const Tensor& x : xs) {
    raw::copy(out.detach().narrow(d, start, x.size(d)), x);
    start += x.size(d);
  }
  record_concat(xs, out, sizes, d);
  return out;
}

Tensor concat_or_view(const std::vector<Tensor>& xs, int64_t dim) {
  std::vector<int64_t> sizes;
  const int64_t d = concat_shape(xs, dim, &sizes);
  Shape shape = xs[0].shape();
  shape[d] = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  Tensor whole = adjacent_pieces(xs, shape, d);
  if (!whole.defined()) return concat(xs, dim);
  record_concat(xs, whole, sizes, d);
  return whole;
}

std::vector<Tensor> concat_accumulation_targets(const Edge& e, Device device,
                                                std::vector<char>* overwrite) {
  if (overwrite != nullptr) overwrite->clear();
  const auto* n = dynamic_cast<const ConcatNode*>(e.fn.get());
  if (n == nullptr || n->dim != 0 || e.output_nr != 0 || n->outputs.empty()) return {};
  Shape shape = n->outputs[0].shape;
  for (size_t i = 0; i < n->sizes.size(); ++i) {  // all or none: nothing claimed before
    shape[0] = n->sizes[i];
    if (!offers_accumulation_target(n->next[i], shape, device)) return {};
  }
  std::vector<Tensor> out;
  for (size_t i = 0; i < n->sizes.size(); ++i) {
    shape[0] = n->sizes[i];
    bool fresh = false;
    out.push_back(accumulation_target(n->next[i], shape, device, overwrite ? &fresh : nullptr));
    if (overwrite != nullptr) overwrite->push_back(fresh ? 1 : 0);
  }
  return out;
}

Tensor contiguous(const Tensor& x) {
  check_defined("contiguous", {&x});
  if (x.is_contiguous()) return x;
  return clone(x);
}

Tensor clone(const Tensor& x) {
  check_defined("clone", {&x});
  Tensor out = copy_to(x, x.dtype(), x.device());
  if (auto n = record<CopyNode>({&x})) set_history(out, n);
  return out;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_defined("cast", {&x});
  if (x.dtype() == dtype) return x;
  Tensor out = copy_to(x, dtype, x.device());
  if (!is_floating(dtype)) return out;
  if (auto n = record<CastNode>({&x})) {
    n->in_dtype = x.dtype();
    n->in_device = x.device();
    set_history(out, n);
  }
  return out;
}

Tensor cast_precomputed(const Tensor& x, const Tensor& converted) {
  check_defined("cast_precomputed", {&x, &converted});
  KILN_CHECK(converted.shape() == x.shape() && converted.device() == x.device() &&
             is_floating(converted.dtype()))
      << "cast_precomputed: " << converted.str() << " is not a cast of " << x.str();
  Tensor out = converted.detach();  // its own autograd identity; shares the storage
  if (auto n = record<CastNode>({&x})) {
    n->in_dtype = x.dtype();
    n->in_device = x.device();
    set_history(out, n);
  }
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  check_defined("to_device", {&x});
  if (x.device() == device) return x;
  Tensor out = copy_to(x, x.dtype(), device);
  if (!is_floating(x.dtype())) return out;
  if (auto n = record<CastNode>({&x})) {
    n->in_dtype = x.dtype();
    n->in_device = x.device();
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
