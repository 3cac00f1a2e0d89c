// dropout: argument checks, the backward node (the same mask, regenerated), the CPU kernel and the
// dispatch to the CUDA kernel (core/ops/dropout.cu, which draws the same mask).
#include "core/ops/dropout.h"

#include <cmath>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/device_dispatch.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/dropout.cu: the CPU kernel's result (the same mask), contiguous, in x's dtype.
Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, uint64_t offset);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

constexpr const char* kOp = "dropout";

// x * keep(i) / (1 - p) with keep(i) = rng_uniform_f(seed, offset + i) >= p (compared in f32), in
// x's compute dtype.
Tensor dropout_cpu(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  Tensor xc = raw::to_compute(x);
  Tensor out = Tensor::empty(x.shape(), xc.dtype());
  const float pf = static_cast<float>(p);
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    const T* px = xc.data<T>();
    T* po = out.data<T>();
    const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
    parallel_for(x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const bool keep = rng_uniform_f(seed, offset + static_cast<uint64_t>(i)) >= pf;
        po[i] = keep ? px[i] * keep_scale : T(0);
      }
    });
  });
  return out;
}

// Either device; returns `dtype`.
Tensor dropout_any(const Tensor& x, double p, uint64_t seed, uint64_t offset, DType dtype) {
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) return raw::convert(cuda::dropout_forward(x, p, seed, offset), dtype);
#endif
  return raw::convert(dropout_cpu(x, p, seed, offset), dtype);
}

class DropoutNode final : public Node {
 public:
  const char* name() const override { return "Dropout"; }
  double p = 0;
  uint64_t seed = 0, offset = 0;
  DType in_dtype = DType::kF32;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {dropout_any(g[0], p, seed, offset, in_dtype)};
  }
};

}  // namespace

Tensor dropout(const Tensor& x, double p, Generator& gen, bool training) {
  check_float_args(kOp, {&x});
  KILN_CHECK(p >= 0.0 && p < 1.0) << kOp << ": p must be in [0, 1), got " << p;
  if (p == 0.0 || !training) return x;
  ops::on_cuda(kOp, "x", x);  // before drawing: a rejected call leaves the generator untouched
  const uint64_t seed = gen.seed(), offset = gen.reserve(static_cast<uint64_t>(x.numel()));
  Tensor out = dropout_any(x, p, seed, offset, x.dtype());
  if (auto n = record<DropoutNode>({&x})) {
    n->p = p;
    n->seed = seed;
    n->offset = offset;
    n->in_dtype = x.dtype();
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
