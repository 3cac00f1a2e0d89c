// Elementwise ops: forward, backward and CPU kernels (compute in f32, or f64 for f64 inputs).
// CUDA tensors run the kernels in elementwise.cu when a GPU is present.
#include "core/ops/elementwise.h"

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/cuda_base_ops.h"
#include "core/thread_pool.h"

namespace kiln {
namespace {

enum class BinOp { kAdd, kSub, kMul };

Shape expanded_strides(const Tensor& t, const Shape& out) {
  const int64_t nd = static_cast<int64_t>(out.size()), off = nd - t.dim();
  Shape st(nd, 0);
  for (int64_t i = 0; i < t.dim(); ++i) st[off + i] = t.size(i) == 1 ? 0 : t.strides()[i];
  return st;
}

template <typename T>
T apply(BinOp op, T x, T y) {
  switch (op) {
    case BinOp::kAdd:
      return x + y;
    case BinOp::kSub:
      return x - y;
    case BinOp::kMul:
      return x * y;
  }
  return 0;
}

#if KILN_WITH_CUDA
cuda::BinaryOp cuda_op(BinOp op) {
  switch (op) {
    case BinOp::kAdd:
      return cuda::BinaryOp::kAdd;
    case BinOp::kSub:
      return cuda::BinaryOp::kSub;
    case BinOp::kMul:
      return cuda::BinaryOp::kMul;
  }
  return cuda::BinaryOp::kAdd;
}
#endif

// A 0-dim tensor holding s in a's compute dtype (kept exact: it never passes through bf16).
Tensor scalar_like(const Tensor& a, double s) {
  return Tensor::full({}, s, raw::compute_dtype(a.dtype()), a.device());
}

Tensor binary_raw(BinOp op, const Tensor& a, const Tensor& b);

// a op s, s in a's compute dtype. CUDA passes s to the kernel instead of making a device scalar.
Tensor scalar_raw(BinOp op, const Tensor& a, double s) {
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(a)) return cuda::binary_scalar(cuda_op(op), a, s);
#endif
  return binary_raw(op, a, scalar_like(a, s));
}

Tensor binary_raw(BinOp op, const Tensor& a, const Tensor& b) {
  Shape out_shape = broadcast_shapes("binary op", a.shape(), b.shape());
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(a)) return cuda::binary(cuda_op(op), a, b);
#endif
  KILN_CHECK(a.device().is_cpu()) << "binary op on " << a.device() << " not built";
  Tensor ac = raw::to_compute(a), bc = raw::convert(b, ac.dtype());
  Tensor out = Tensor::empty(out_shape, ac.dtype());
  KILN_DISPATCH_FLOAT(ac.dtype(), T, {
    const T* pa = ac.data<T>();
    const T* pb = bc.data<T>();
    T* po = out.data<T>();
    const int64_t n = out.numel();
    if (a.shape() == b.shape()) {
      parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = apply(op, pa[i], pb[i]);
      });
    } else if (a.shape() == out_shape && b.numel() == 1) {  // tensor op scalar
      const T y = pb[0];
      parallel_for(n, 1 << 15, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = apply(op, pa[i], y);
      });
    } else if (a.shape() == out_shape && b.dim() >= 1 && b.numel() == b.size(-1) &&
               b.size(-1) == out_shape.back()) {  // row bias: (..., C) op (C)
      const int64_t c = out_shape.back();
      parallel_for(n / std::max<int64_t>(c, 1), 64, [&](int64_t s, int64_t e) {
        for (int64_t r = s; r < e; ++r)
          for (int64_t j = 0; j < c; ++j) po[r * c + j] = apply(op, pa[r * c + j], pb[j]);
      });
    } else {
      cpu::for_each_offset2(
          out_shape, expanded_strides(ac, out_shape), expanded_strides(bc, out_shape),
          [&](int64_t i, int64_t oa, int64_t ob) { po[i] = apply(op, pa[oa], pb[ob]); });
    }
  });
  return raw::convert(out, a.dtype());
}

class AddNode final : public Node {
 public:
  const char* name() const override { return "Add"; }
  double alpha = 1.0;  // out = a + alpha * b
  Shape a_shape, b_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    Tensor ga = wants(0) ? sum_to(g[0], a_shape) : Tensor();
    if (!wants(1)) return {ga, Tensor()};
    return {ga, sum_to(alpha == 1.0 ? g[0] : scale(g[0], alpha), b_shape)};
  }
};

class MulNode final : public Node {
 public:
  const char* name() const override { return "Mul"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &a = saved[0], &b = saved[1];
    Tensor ga = wants(0) ? sum_to(mul(g[0], b), a.shape()) : Tensor();
    Tensor gb = wants(1) ? sum_to(mul(g[0], a), b.shape()) : Tensor();
    return {ga, gb};
  }
};

class ScaleNode final : public Node {
 public:
  const char* name() const override { return "Scale"; }
  double s = 1.0;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {scale(g[0], s)}; }
};

class IdentityNode final : public Node {
 public:
  const char* name() const override { return "AddScalar"; }
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override { return {g[0]}; }
};

class SumToNode final : public Node {
 public:
  const char* name() const override { return "SumTo"; }
  Shape in_shape;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    // Broadcast the gradient back up: add to zeros of the input shape.
    Tensor z = Tensor::zeros(in_shape, g[0].dtype(), g[0].device());
    return {add(z, g[0])};
  }
};

Tensor add_like(BinOp op, const Tensor& a, const Tensor& b, const char* name) {
  check_float_args(name, {&a, &b});
  Tensor out = binary_raw(op, a, b);
  if (auto n = record<AddNode>({&a, &b})) {
    n->alpha = op == BinOp::kSub ? -1.0 : 1.0;
    n->a_shape = a.shape();
    n->b_shape = b.shape();
    set_history(out, n);
  }
  return out;
}

}  // namespace

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  const size_t nd = std::max(a.size(), b.size());
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    int64_t da = i < nd - a.size() ? 1 : a[i - (nd - a.size())];
    int64_t db = i < nd - b.size() ? 1 : b[i - (nd - b.size())];
    KILN_CHECK(da == db || da == 1 || db == 1)
        << op << ": shapes " << shape_str(a) << " and " << shape_str(b) << " do not broadcast";
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return add_like(BinOp::kAdd, a, b, "add"); }
Tensor sub(const Tensor& a, const Tensor& b) { return add_like(BinOp::kSub, a, b, "sub"); }

Tensor mul(const Tensor& a, const Tensor& b) {
  check_float_args("mul", {&a, &b});
  Tensor out = binary_raw(BinOp::kMul, a, b);
  if (auto n = record<MulNode>({&a, &b})) {
    n->saved = {a, b};
    set_history(out, n);
  }
  return out;
}

Tensor scale(const Tensor& a, double s) {
  check_float_args("scale", {&a});
  Tensor out = scalar_raw(BinOp::kMul, a, s);
  if (auto n = record<ScaleNode>({&a})) {
    n->s = s;
    set_history(out, n);
  }
  return out;
}

Tensor add_scalar(const Tensor& a, double s) {
  check_float_args("add_scalar", {&a});
  Tensor out = scalar_raw(BinOp::kAdd, a, s);
  if (auto n = record<IdentityNode>({&a})) set_history(out, n);
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int64_t nd = x.dim(), off = nd - static_cast<int64_t>(shape.size());
  KILN_CHECK(off >= 0) << "sum_to: cannot reduce " << x.str() << " to " << shape_str(shape);
  Shape red_strides(nd, 0);
  Shape cs = contiguous_strides(shape);
  for (int64_t i = 0; i < static_cast<int64_t>(shape.size()); ++i) {
    KILN_CHECK(shape[i] == x.size(off + i) || shape[i] == 1)
        << "sum_to: cannot reduce " << x.str() << " to " << shape_str(shape);
    red_strides[off + i] = shape[i] == 1 ? 0 : cs[i];
  }
  Tensor out;
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) out = cuda::sum_to(x, shape);
#endif
  if (!out.defined()) {
    KILN_CHECK(x.device().is_cpu()) << "sum_to on " << x.device() << " not built";
    Tensor xc = raw::to_compute(x);
    out = Tensor::zeros(shape, xc.dtype());
    KILN_DISPATCH_FLOAT(xc.dtype(), T, {
      const T* px = xc.data<T>();
      T* po = out.data<T>();
      cpu::for_each_offset2(x.shape(), contiguous_strides(x.shape()), red_strides,
                            [&](int64_t, int64_t ox, int64_t oo) { po[oo] += px[ox]; });
    });
    out = raw::convert(out, x.dtype());
  }
  if (auto n = record<SumToNode>({&x})) {
    n->in_shape = x.shape();
    set_history(out, n);
  }
  return out;
}

void add_(const Tensor& dst, const Tensor& src, double alpha) {
  KILN_CHECK(dst.shape() == src.shape()) << "add_: " << dst.str() << " += " << src.str();
  KILN_CHECK(dst.device() == src.device()) << "add_: " << dst.str() << " += " << src.str();
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(dst)) return cuda::add_inplace(dst, src, alpha);
#endif
  KILN_CHECK(dst.device().is_cpu()) << "add_ on " << dst.device() << " not built";
  if (dst.dtype() == DType::kF32 && src.dtype() == DType::kF32 && dst.is_contiguous() &&
      src.is_contiguous()) {
    float* d = dst.data<float>();
    const float* s = src.data<float>();
    const float a = static_cast<float>(alpha);
    parallel_for(dst.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) d[i] += a * s[i];
    });
    return;
  }
  Tensor sc = raw::contiguous(src);
  void* d = dst.raw();
  DType dt = dst.dtype(), st = sc.dtype();
  const void* s = sc.raw();
  cpu::for_each_offset(dst.shape(), dst.strides(), [&](int64_t lin, int64_t off) {
    cpu::store(d, dt, off, cpu::load(d, dt, off) + alpha * cpu::load(s, st, lin));
  });
}

void mul_(const Tensor& dst, double s) {
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(dst)) return cuda::mul_inplace(dst, s);
#endif
  KILN_CHECK(dst.device().is_cpu()) << "mul_ on " << dst.device() << " not built";
  if (dst.dtype() == DType::kF32 && dst.is_contiguous()) {
    float* d = dst.data<float>();
    const float fs = static_cast<float>(s);
    parallel_for(dst.numel(), 1 << 15, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) d[i] *= fs;
    });
    return;
  }
  void* d = dst.raw();
  DType dt = dst.dtype();
  cpu::for_each_offset(dst.shape(), dst.strides(), [&](int64_t, int64_t off) {
    cpu::store(d, dt, off, cpu::load(d, dt, off) * s);
  });
}

double sum_squares(const Tensor& x) {
#if KILN_WITH_CUDA
  if (ops::run_on_cuda(x)) return cuda::sum_squares(x);
#endif
  KILN_CHECK(x.device().is_cpu()) << "sum_squares on " << x.device() << " not built";
  if (x.dtype() == DType::kF32 && x.is_contiguous()) {
    const float* p = x.data<float>();
    double s = 0;
    for (int64_t i = 0; i < x.numel(); ++i) s += static_cast<double>(p[i]) * p[i];
    return s;
  }
  double s = 0;
  for (double v : x.to_vector()) s += v * v;
  return s;
}

}  // namespace kiln
