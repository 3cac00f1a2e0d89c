// The conjugate autograd pairs (see mappings.h): the raw collectives along a dimension and one
// autograd node per op whose backward is the partner's forward.
#include "parallel/tensor_parallel/mappings.h"

#include <vector>

#include "core/autograd.h"
#include "core/check.h"

namespace kiln::parallel::tp {
namespace {

int64_t norm_dim(const Tensor& x, int64_t dim) {
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  KILN_CHECK(d >= 0 && d < x.dim()) << "tensor parallel: dim " << dim << " of " << x.str();
  return d;
}

// Permutation moving `d` to the front, and its inverse.
std::vector<int64_t> to_front(int64_t n, int64_t d) {
  std::vector<int64_t> p{d};
  for (int64_t i = 0; i < n; ++i)
    if (i != d) p.push_back(i);
  return p;
}
std::vector<int64_t> from_front(int64_t n, int64_t d) {
  std::vector<int64_t> p;
  for (int64_t i = 0; i < n; ++i) p.push_back(i < d ? i + 1 : (i == d ? 0 : i));
  return p;
}

// A collective's output shape: x's with dim scaled by `num / den`.
Shape scaled(const Tensor& front, int64_t num, int64_t den) {
  Shape s = front.shape();
  s[0] = s[0] * num / den;
  return s;
}

using Fn = Tensor (*)(const Tensor&, int64_t, Communicator&);

// One node type for all six ops: backward applies `bwd` (a raw collective) to the gradient.
class TpNode final : public Node {
 public:
  const char* name() const override { return op; }
  const char* op = "tp";
  Fn bwd = nullptr;
  int64_t dim = 0;
  Communicator* comm = nullptr;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    NoGradGuard ng;
    return {bwd(g[0], dim, *comm)};
  }
};

Tensor identity(const Tensor& x, int64_t, Communicator&) { return x; }
Tensor all_reduce_fn(const Tensor& x, int64_t, Communicator& c) { return all_reduce_copy(x, c); }

Tensor apply(const char* op, const Tensor& x, int64_t dim, Communicator& c, Fn fwd, Fn bwd) {
  Tensor out;
  {
    NoGradGuard ng;
    out = fwd(x, dim, c);
    if (out.same(x)) out = x.detach();
  }
  if (auto n = record<TpNode>({&x})) {
    n->op = op;
    n->bwd = bwd;
    n->dim = dim;
    n->comm = &c;
    set_history(out, n);
  }
  return out;
}

}  // namespace

Tensor all_reduce_copy(const Tensor& x, Communicator& tp) {
  Tensor out = x.clone().contiguous();
  if (tp.size() > 1) tp.all_reduce(out, ReduceOp::kSum);
  return out;
}

Tensor all_gather_dim(const Tensor& x, int64_t dim, Communicator& tp) {
  const int64_t d = norm_dim(x, dim);
  if (tp.size() == 1) return x.contiguous();
  Tensor front = x.permute(to_front(x.dim(), d)).contiguous();
  Tensor out = Tensor::empty(scaled(front, tp.size(), 1), x.dtype(), x.device());
  tp.all_gather(front, out);
  return out.permute(from_front(x.dim(), d)).contiguous();
}

Tensor reduce_scatter_dim(const Tensor& x, int64_t dim, Communicator& tp) {
  const int64_t d = norm_dim(x, dim);
  KILN_CHECK(x.size(d) % tp.size() == 0) << "tensor parallel: dim " << d << " of " << x.str()
                                         << " does not split over tp " << tp.size();
  if (tp.size() == 1) return x.clone().contiguous();
  Tensor front = x.permute(to_front(x.dim(), d)).contiguous();
  Tensor out = Tensor::empty(scaled(front, 1, tp.size()), x.dtype(), x.device());
  tp.reduce_scatter(front, out, ReduceOp::kSum);
  return out.permute(from_front(x.dim(), d)).contiguous();
}

Tensor chunk_of(const Tensor& x, int64_t dim, Communicator& tp) {
  const int64_t d = norm_dim(x, dim);
  KILN_CHECK(x.size(d) % tp.size() == 0) << "tensor parallel: dim " << d << " of " << x.str()
                                         << " does not split over tp " << tp.size();
  const int64_t n = x.size(d) / tp.size();
  return x.narrow(d, tp.rank() * n, n).contiguous();
}

Tensor copy_to_tp(const Tensor& x, Communicator& tp) {
  return apply("CopyToTp", x, 0, tp, identity, all_reduce_fn);
}
Tensor reduce_from_tp(const Tensor& x, Communicator& tp) {
  return apply("ReduceFromTp", x, 0, tp, all_reduce_fn, identity);
}
Tensor gather_from_sequence(const Tensor& x, int64_t dim, Communicator& tp) {
  return apply("GatherFromSequence", x, dim, tp, all_gather_dim, reduce_scatter_dim);
}
Tensor reduce_scatter_to_sequence(const Tensor& x, int64_t dim, Communicator& tp) {
  return apply("ReduceScatterToSequence", x, dim, tp, reduce_scatter_dim, all_gather_dim);
}
Tensor scatter_to_sequence(const Tensor& x, int64_t dim, Communicator& tp) {
  return apply("ScatterToSequence", x, dim, tp, chunk_of, all_gather_dim);
}
Tensor gather_from_tp(const Tensor& x, int64_t dim, Communicator& tp) {
  return apply("GatherFromTp", x, dim, tp, all_gather_dim, chunk_of);
}

}  // namespace kiln::parallel::tp
