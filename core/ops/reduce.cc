// sum / mean: forward, backward (broadcast the gradient back) and their CPU kernels. CUDA
// tensors run the deterministic reductions in reduce.cu when a GPU is present.
#include "core/ops/reduce.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/op_util.h"
#include "core/thread_pool.h"

namespace kiln {
namespace {

using ops::DimSplit;

// Elements per partial sum in a full reduction, and output columns per task in a dim reduction.
// Both are constants, so the order of every addition is a function of the shape alone.
constexpr int64_t kBlock = 4096;
constexpr int64_t kInnerBlock = 256;

// Sum of p[0, n): partial sums over fixed blocks, added in block order.
template <typename T>
double sum_all_cpu(const T* p, int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(blocks, 0.0);
  parallel_for(blocks, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double s = 0;
      const int64_t end = std::min(n, (b + 1) * kBlock);
      for (int64_t i = b * kBlock; i < end; ++i) s += p[i];
      part[b] = s;
    }
  });
  double s = 0;
  for (double v : part) s += v;
  return s;
}

// out[o, i] = sum_k x[o, k, i] / div, k in increasing order, accumulated in f64.
template <typename T>
void sum_dim_cpu(const T* x, T* out, const DimSplit& s, double div) {
  const int64_t col_blocks = (s.inner + kInnerBlock - 1) / kInnerBlock;
  const int64_t work = std::max<int64_t>(1, s.n * std::min(s.inner, kInnerBlock));
  parallel_for(s.outer * col_blocks, std::max<int64_t>(1, (1 << 14) / work),
               [&](int64_t t0, int64_t t1) {
                 double acc[kInnerBlock];
                 for (int64_t t = t0; t < t1; ++t) {
                   const int64_t o = t / col_blocks, i0 = (t % col_blocks) * kInnerBlock;
                   const int64_t w = std::min(s.inner, i0 + kInnerBlock) - i0;
                   std::fill(acc, acc + w, 0.0);
                   const T* base = x + o * s.n * s.inner + i0;
                   for (int64_t k = 0; k < s.n; ++k)
                     for (int64_t i = 0; i < w; ++i) acc[i] += base[k * s.inner + i];
                   T* po = out + o * s.inner + i0;
                   for (int64_t i = 0; i < w; ++i) po[i] = static_cast<T>(acc[i] / div);
                 }
               });
}

// Reduces x over `dim` (nullopt: every element) into out_shape, dividing by div.
Tensor reduce_cpu(const Tensor& x, std::optional<int64_t> dim, const Shape& out_shape, double div) {
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) {
    Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
    std::vector<bool> mask(x.dim(), !dim.has_value());
    if (dim && x.dim() > 0) mask[*dim] = true;
    cuda::reduce_sum(x, mask, out, div, false);
    return out;
  }
#endif
  Tensor xc = raw::to_compute(x);
  Tensor out = Tensor::empty(out_shape, xc.dtype());
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    if (!dim) {
      out.data<T>()[0] = static_cast<T>(sum_all_cpu(xc.data<T>(), xc.numel()) / div);
    } else {
      sum_dim_cpu(xc.data<T>(), out.data<T>(), ops::split_at(x.shape(), *dim), div);
    }
  });
  return raw::convert(out, x.dtype());
}

// The gradient of a reduction: g / div broadcast back over the reduced dim (or everywhere).
Tensor expand_cpu(const Tensor& g, const Shape& in_shape, std::optional<int64_t> dim, double div) {
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(g)) {
    if (dim && in_shape.empty()) dim.reset();  // a 0-dim input reduced over "dim 0"
    return cuda::reduce_expand(g, in_shape, dim, div);
  }
#endif
  Tensor gc = raw::to_compute(g);
  Tensor out = Tensor::empty(in_shape, gc.dtype());
  KILN_DISPATCH_FLOAT(gc.dtype(), T, {
    const T* pg = gc.data<T>();
    T* po = out.data<T>();
    if (!dim) {
      raw::fill(out, static_cast<double>(pg[0]) / div);
    } else {
      const DimSplit s = ops::split_at(in_shape, *dim);
      parallel_for(s.outer * s.n, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(s.inner, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r) {
                       const T* src = pg + (r / s.n) * s.inner;
                       T* dst = po + r * s.inner;
                       for (int64_t i = 0; i < s.inner; ++i) dst[i] = static_cast<T>(src[i] / div);
                     }
                   });
    }
  });
  return raw::convert(out, g.dtype());
}

class ReduceNode final : public Node {
 public:
  const char* name() const override { return is_mean ? "Mean" : "Sum"; }
  bool is_mean = false;
  Shape in_shape;
  std::optional<int64_t> dim;
  double div = 1.0;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {expand_cpu(g[0], in_shape, dim, div)};
  }
};

Tensor reduce(const char* op, bool is_mean, const Tensor& x, std::optional<int64_t> dim,
              bool keepdim) {
  ops::check_float_arg(op, "x", x);
  if (!ops::run_on_cuda(x)) ops::check_cpu(op, "x", x);
  Shape out_shape;
  double count = static_cast<double>(x.numel());
  if (dim) {
    dim = wrap_dim(op, *dim, x.dim());
    out_shape = x.shape();
    if (x.dim() > 0) {
      count = static_cast<double>(x.size(*dim));
      if (keepdim) {
        out_shape[*dim] = 1;
      } else {
        out_shape.erase(out_shape.begin() + *dim);
      }
    }
  }
  const double div = is_mean ? count : 1.0;
  Tensor out = reduce_cpu(x, dim, out_shape, div);
  if (auto n = record<ReduceNode>({&x})) {
    n->is_mean = is_mean;
    n->in_shape = x.shape();
    n->dim = dim;
    n->div = div;
    set_history(out, n);
  }
  return out;
}

}  // namespace

Tensor sum(const Tensor& x) { return reduce("sum", false, x, std::nullopt, false); }
Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce("sum", false, x, dim, keepdim);
}
Tensor mean(const Tensor& x) { return reduce("mean", true, x, std::nullopt, false); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce("mean", true, x, dim, keepdim);
}

}  // namespace kiln
