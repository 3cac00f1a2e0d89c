// matmul and linear: shape logic, backward, and the CPU GEMM through OpenBLAS.
#include "core/ops/matmul.h"

#include <cblas.h>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/view.h"

namespace kiln {
namespace raw {

void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool ta, bool tb, double alpha,
          double beta) {
  const int m = static_cast<int>(c.size(0)), n = static_cast<int>(c.size(1));
  const int k = static_cast<int>(ta ? a.size(0) : a.size(1));
  const int lda = static_cast<int>(a.size(1)), ldb = static_cast<int>(b.size(1));
  const CBLAS_TRANSPOSE ca = ta ? CblasTrans : CblasNoTrans, cb = tb ? CblasTrans : CblasNoTrans;
  if (c.dtype() == DType::kF32) {
    cblas_sgemm(CblasRowMajor, ca, cb, m, n, k, static_cast<float>(alpha), a.data<float>(), lda,
                b.data<float>(), ldb, static_cast<float>(beta), c.data<float>(), n);
  } else {
    KILN_CHECK(c.dtype() == DType::kF64) << "gemm: dtype " << c.dtype();
    cblas_dgemm(CblasRowMajor, ca, cb, m, n, k, alpha, a.data<double>(), lda, b.data<double>(), ldb,
                beta, c.data<double>(), n);
  }
}

}  // namespace raw

namespace {

struct MatmulDims {
  int64_t batch = 1, m = 0, k = 0, n = 0;
  bool b_batched = false;
  Shape out_shape;
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  KILN_CHECK(a.dim() >= 2 && b.dim() >= 2)
      << "matmul: operands need at least 2 dims, got " << a.str() << " and " << b.str();
  MatmulDims d;
  d.m = ta ? a.size(-1) : a.size(-2);
  d.k = ta ? a.size(-2) : a.size(-1);
  int64_t kb = tb ? b.size(-1) : b.size(-2);
  d.n = tb ? b.size(-2) : b.size(-1);
  KILN_CHECK(d.k == kb) << "matmul: inner dimensions differ (" << d.k << " vs " << kb << ") for "
                        << a.str() << (ta ? "^T" : "") << " @ " << b.str() << (tb ? "^T" : "");
  d.batch = a.numel() / std::max<int64_t>(d.m * d.k, 1);
  if (a.numel() == 0) d.batch = shape_numel(Shape(a.shape().begin(), a.shape().end() - 2));
  d.b_batched = b.dim() > 2;
  if (d.b_batched) {
    KILN_CHECK(b.dim() == a.dim() &&
               std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()))
        << "matmul: batch dims of " << a.str() << " and " << b.str() << " differ";
  }
  d.out_shape = Shape(a.shape().begin(), a.shape().end() - 2);
  d.out_shape.push_back(d.m);
  d.out_shape.push_back(d.n);
  return d;
}

Tensor matmul_raw(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  MatmulDims d = matmul_dims(a, b, ta, tb);
  KILN_CHECK(a.device().is_cpu()) << "matmul on " << a.device() << " not built";
  Tensor ac = raw::to_compute(a), bc = raw::to_compute(b);
  Tensor out = Tensor::empty(d.out_shape, ac.dtype());
  if (out.numel() == 0) return raw::convert(out, a.dtype());
  if (d.k == 0) {
    raw::fill(out, 0.0);
    return raw::convert(out, a.dtype());
  }
  if (!d.b_batched && !ta) {  // fold the batch into M: one large GEMM
    raw::gemm(ac.reshape({d.batch * d.m, d.k}), bc, out.reshape({d.batch * d.m, d.n}), false, tb);
    return raw::convert(out, a.dtype());
  }
  Tensor a3 = ac.reshape({d.batch, ta ? d.k : d.m, ta ? d.m : d.k});
  Tensor b3 = d.b_batched ? bc.reshape({d.batch, tb ? d.n : d.k, tb ? d.k : d.n}) : bc;
  Tensor o3 = out.reshape({d.batch, d.m, d.n});
  for (int64_t i = 0; i < d.batch; ++i) {
    Tensor bi = d.b_batched ? b3.narrow(0, i, 1).reshape({b3.size(1), b3.size(2)}) : b3;
    raw::gemm(a3.narrow(0, i, 1).reshape({a3.size(1), a3.size(2)}), bi,
              o3.narrow(0, i, 1).reshape({d.m, d.n}), ta, tb);
  }
  return raw::convert(out, a.dtype());
}

class MatmulNode final : public Node {
 public:
  const char* name() const override { return "Matmul"; }
  bool ta = false, tb = false;
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &a = saved[0], &b = saved[1];
    const Tensor& go = g[0];  // (..., M, N)
    Tensor ga, gb;
    if (next[0].fn) {
      // d op(a) = g op(b)^T ; if ta, da = (g op(b)^T)^T = op(b) g^T
      ga = ta ? matmul_raw(b, go, tb, true) : matmul_raw(go, b, false, !tb);
    }
    if (next[1].fn) {
      if (b.dim() > 2) {
        gb = tb ? matmul_raw(go, a, true, ta) : matmul_raw(a, go, !ta, false);
      } else {  // b shared across the batch: flatten the batch into the reduction dim
        const int64_t n = go.size(-1);
        Tensor g2 = raw::contiguous(go).reshape({-1, n});
        Tensor a2 = ta ? raw::contiguous(a.transpose(-1, -2)).reshape({-1, a.size(-2)})
                       : raw::contiguous(a).reshape({-1, a.size(-1)});
        gb = tb ? matmul_raw(g2, a2, true, false) : matmul_raw(a2, g2, true, false);
      }
    }
    return {ga, gb};
  }
};

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  check_float_args("matmul", {&a, &b});
  Tensor out;
  {
    NoGradGuard ng;  // the raw path reshapes internally; record only the matmul itself
    out = matmul_raw(a, b, trans_a, trans_b);
  }
  if (auto n = record<MatmulNode>({&a, &b})) {
    n->ta = trans_a;
    n->tb = trans_b;
    n->saved = {a, b};
    set_history(out, n);
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_float_args("linear", {&x, &w});
  check_dim("linear", "weight", w, 2);
  KILN_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1))
      << "linear: input " << x.str() << " does not match weight " << w.str() << " (OUT, IN)";
  Shape out_shape = x.shape();
  out_shape.back() = w.size(0);
  Tensor x2 = reshape(x, {-1, x.size(-1)});
  Tensor y = matmul(x2, w, false, true);
  if (b.defined()) {
    check_float_args("linear", {&x, &b});
    KILN_CHECK(b.dim() == 1 && b.size(0) == w.size(0))
        << "linear: bias " << b.str() << " does not match weight " << w.str();
    y = add(y, b);
  }
  return reshape(y, out_shape);
}

}  // namespace kiln
