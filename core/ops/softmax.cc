// softmax / log_softmax: forward, backward (from the saved output), the CPU kernels and the
// dispatch to the CUDA kernels (core/ops/softmax.cu, last dim only: another dim is moved last by a
// transposed copy). The CPU kernels work on "lines": the n elements along dim for one
// (outer, inner) position, stride inner apart. Lines are independent, so the parallel split over
// them never changes a result.
#include "core/ops/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/cpu/fast_math.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/op_util.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/softmax.cu: softmax (or log_softmax) over the last dim, and its backward from the
// output y. Contiguous results in the input's dtype.
Tensor softmax_last_dim(const Tensor& x, bool log);
Tensor softmax_last_dim_backward(const Tensor& g, const Tensor& y, bool log);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

using ops::DimSplit;

int64_t line_grain(const DimSplit& s) {
  return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(s.n, 1));
}

// Calls fn(offset of the line's first element, stride) for every line, in parallel.
template <typename F>
void for_each_line(const DimSplit& s, F&& fn) {
  parallel_for(s.outer * s.inner, line_grain(s), [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) fn((l / s.inner) * s.n * s.inner + l % s.inner, s.inner);
  });
}

Tensor softmax_cpu(const Tensor& x, int64_t dim, bool log) {
  Tensor xc = raw::to_compute(x);
  Tensor y = Tensor::empty(x.shape(), xc.dtype());
  const DimSplit s = ops::split_at(x.shape(), dim);
  const int64_t n = s.n;
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    const T* px = xc.data<T>();
    T* py = y.data<T>();
    for_each_line(s, [&](int64_t off, int64_t st) {
      const T* xl = px + off;
      T* yl = py + off;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t k = 0; k < n; ++k) m = std::max(m, xl[k * st]);
      double sum = 0;
      for (int64_t k = 0; k < n; ++k) {
        const T e = cpu::exp_fast(xl[k * st] - m);
        if (!log) yl[k * st] = e;
        sum += e;
      }
      if (log) {
        const double lse = static_cast<double>(m) + std::log(sum);
        for (int64_t k = 0; k < n; ++k) yl[k * st] = static_cast<T>(xl[k * st] - lse);
      } else {
        for (int64_t k = 0; k < n; ++k) yl[k * st] = static_cast<T>(yl[k * st] / sum);
      }
    });
  });
  return raw::convert(y, x.dtype());
}

// softmax: dx = y * (g - sum(g * y)); log_softmax: dx = g - exp(y) * sum(g). Sums along dim.
Tensor softmax_backward_cpu(const Tensor& g, const Tensor& y, int64_t dim, bool log) {
  Tensor gc = raw::to_compute(g), yc = raw::convert(y, gc.dtype());
  Tensor dx = Tensor::empty(y.shape(), gc.dtype());
  const DimSplit s = ops::split_at(y.shape(), dim);
  const int64_t n = s.n;
  KILN_DISPATCH_FLOAT(gc.dtype(), T, {
    const T *pg = gc.data<T>(), *py = yc.data<T>();
    T* pd = dx.data<T>();
    for_each_line(s, [&](int64_t off, int64_t st) {
      const T *gl = pg + off, *yl = py + off;
      T* dl = pd + off;
      double acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += log ? gl[k * st] : gl[k * st] * yl[k * st];
      const T a = static_cast<T>(acc);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = k * st;
        dl[i] = log ? gl[i] - cpu::exp_fast(yl[i]) * a : yl[i] * (gl[i] - a);
      }
    });
  });
  return raw::convert(dx, y.dtype());
}

#if KILN_WITH_CUDA
// The CUDA kernels reduce over the last dim; any other dim d goes through a transposed copy.
Tensor softmax_cuda(const Tensor& x, int64_t d, bool log) {
  const int64_t last = x.dim() - 1;
  if (x.dim() == 0 || d == last) return cuda::softmax_last_dim(x, log);
  Tensor yt = cuda::softmax_last_dim(x.detach().transpose(d, last), log);
  return raw::contiguous(yt.transpose(d, last));
}
Tensor softmax_backward_cuda(const Tensor& g, const Tensor& y, int64_t d, bool log) {
  const int64_t last = y.dim() - 1;
  if (y.dim() == 0 || d == last) return cuda::softmax_last_dim_backward(g, y, log);
  Tensor dxt = cuda::softmax_last_dim_backward(g.detach().transpose(d, last),
                                               y.detach().transpose(d, last), log);
  return raw::contiguous(dxt.transpose(d, last));
}
#endif

Tensor softmax_any(const Tensor& x, int64_t d, bool log) {
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) return softmax_cuda(x, d, log);
#endif
  return softmax_cpu(x, d, log);
}
Tensor softmax_backward_any(const Tensor& g, const Tensor& y, int64_t d, bool log) {
#if KILN_WITH_CUDA
  if (y.device().is_cuda()) return softmax_backward_cuda(g, y, d, log);
#endif
  return softmax_backward_cpu(g, y, d, log);
}

class SoftmaxNode final : public Node {
 public:
  const char* name() const override { return log ? "LogSoftmax" : "Softmax"; }
  bool log = false;
  int64_t dim = 0;
  // saved: the output, detached (saving it with its history would make a reference cycle).
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {softmax_backward_any(g[0], saved[0], dim, log)};
  }
};

Tensor softmax_like(const char* op, const Tensor& x, int64_t dim, bool log) {
  ops::check_float_arg(op, "x", x);
  const int64_t d = wrap_dim(op, dim, x.dim());
  ops::on_cuda(op, "x", x);  // a CUDA tensor without a CUDA backend is an error here
  Tensor y = softmax_any(x, d, log);
  if (auto n = record<SoftmaxNode>({&x})) {
    n->log = log;
    n->dim = d;
    n->saved = {y.detach()};
    set_history(y, n);
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_like("softmax", x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) {
  return softmax_like("log_softmax", x, dim, true);
}

}  // namespace kiln
