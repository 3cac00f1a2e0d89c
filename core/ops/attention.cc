// causal_attention: argument checks, the backward node, and the CPU kernels. The CPU kernels work
// per (batch, head) on blocks of kBlockRows query rows: one GEMM for the block's scores against
// the keys it may see (causality skips the rest), a stable softmax per row in the compute dtype,
// one GEMM for the output. Forward saves the per-row log-sum-exp; backward recomputes the
// probabilities from it.
#include "core/ops/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/matmul.h"
#include "core/parallel.h"

namespace kiln {
namespace {

constexpr const char* kOp = "causal_attention";
constexpr int64_t kBlockRows = 64;  // query rows per score block: the scratch is kBlockRows x T

struct AttnDims {
  int64_t b = 0, hq = 0, hkv = 0, t = 0, d = 0;
  int64_t group() const { return hq / hkv; }
  // The kv matrix (b * Hkv + h / group) that query matrix i = b * Hq + h reads.
  int64_t kv_index(int64_t i) const { return (i / hq) * hkv + (i % hq) / group(); }
};

AttnDims check_attention_args(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_float_args(kOp, {&q, &k, &v});
  check_dim(kOp, "q (B, Hq, T, D)", q, 4);
  check_dim(kOp, "k (B, Hkv, T, D)", k, 4);
  check_dim(kOp, "v (B, Hkv, T, D)", v, 4);
  KILN_CHECK(k.shape() == v.shape())
      << kOp << ": k " << k.str() << " and v " << v.str() << " must have the same shape";
  KILN_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3))
      << kOp << ": q " << q.str() << " (B, Hq, T, D) does not match k " << k.str()
      << " (B, Hkv, T, D) in B, T or D";
  KILN_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0)
      << kOp << ": the number of query heads (Hq = " << q.size(1)
      << ") must be a multiple of the number of kv heads (Hkv = " << k.size(1) << ")";
  KILN_CHECK(q.size(3) > 0) << kOp << ": head dim D must be positive, got q " << q.str();
  return {q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
}

void check_cpu(const Tensor& q) {
  KILN_CHECK(q.device().is_cpu()) << kOp << ": only CPU tensors are supported for now (no CUDA "
                                  << "kernel yet), got q " << q.str();
}

// OpenBLAS runs its own thread pool; GEMMs called from several parallel_for workers at once
// oversubscribe the cores (measured 10x slower on 2 cores). While heads run in parallel, each
// GEMM runs on the calling thread. (OpenBLAS splits a GEMM over M and N, not K, so its result
// does not depend on its thread count; Attention.IndependentOfThreadCount checks the whole op.)
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : prev_(openblas_get_num_threads()) { openblas_set_num_threads(1); }
  ~SingleThreadedBlas() { openblas_set_num_threads(prev_); }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int prev_;
};

// Runs fn over [0, heads): one head per task with single-threaded GEMMs when there are enough
// heads to occupy the pool, else in order on this thread with OpenBLAS threading each GEMM.
void for_heads(int64_t heads, const std::function<void(int64_t, int64_t)>& fn) {
  if (heads >= num_threads() && num_threads() > 1) {
    SingleThreadedBlas guard;
    parallel_for(heads, 1, fn);
  } else {
    fn(0, heads);
  }
}

// Matrix i of a contiguous (N, R, C) tensor as an (R, C) view.
Tensor mat(const Tensor& t3, int64_t i) {
  return t3.narrow(0, i, 1).reshape({t3.size(1), t3.size(2)});
}
// Rows [r0, r0 + n) of a contiguous (R, C) matrix.
Tensor rows(const Tensor& m, int64_t r0, int64_t n) { return m.narrow(0, r0, n); }
// The first r * c elements of a 1-D scratch buffer as a contiguous (r, c) matrix.
Tensor scratch_mat(const Tensor& buf, int64_t r, int64_t c) {
  return buf.narrow(0, 0, r * c).reshape({r, c});
}

// Turns the (n, kend) block of scaled scores for query rows r0.. into probabilities in place
// (zero above the diagonal) and writes each row's log-sum-exp.
template <typename T>
void softmax_block(T* s, int64_t n, int64_t kend, int64_t r0, T* lse) {
  for (int64_t r = 0; r < n; ++r) {
    T* row = s + r * kend;
    const int64_t valid = r0 + r + 1;  // keys 0..t
    T m = row[0];
    for (int64_t j = 1; j < valid; ++j) m = std::max(m, row[j]);
    T sum = 0;
    for (int64_t j = 0; j < valid; ++j) {
      row[j] = std::exp(row[j] - m);
      sum += row[j];
    }
    const T inv = T(1) / sum;
    for (int64_t j = 0; j < valid; ++j) row[j] *= inv;
    for (int64_t j = valid; j < kend; ++j) row[j] = 0;
    lse[r0 + r] = m + std::log(sum);
  }
}

// One (batch, query head): o = softmax(scale q k^T, causal) v. q, o: (T, D); k, v: (T, D).
template <typename T>
void forward_head(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, T* lse,
                  const Tensor& scratch, double scale) {
  const int64_t t = q.size(0);
  for (int64_t r0 = 0; r0 < t; r0 += kBlockRows) {
    const int64_t n = std::min(kBlockRows, t - r0), kend = r0 + n;
    Tensor s = scratch_mat(scratch, n, kend);
    raw::gemm(rows(q, r0, n), rows(k, 0, kend), s, false, true, scale);
    softmax_block(s.data<T>(), n, kend, r0, lse);
    raw::gemm(s, rows(v, 0, kend), rows(o, r0, n), false, false);
  }
}

struct AttnForward {
  Tensor out;  // (B, Hq, T, D) compute dtype
  Tensor lse;  // (B, Hq, T) compute dtype
};

AttnForward causal_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const AttnDims& d, double scale) {
  check_cpu(q);
  // detach: the views taken below on worker threads must never record autograd nodes.
  Tensor qc = raw::to_compute(q).detach(), kc = raw::convert(k, qc.dtype()).detach(),
         vc = raw::convert(v, qc.dtype()).detach();
  const DType ct = qc.dtype();
  AttnForward f{Tensor::empty(q.shape(), ct), Tensor::empty({d.b, d.hq, d.t}, ct)};
  Tensor q3 = qc.reshape({d.b * d.hq, d.t, d.d}), k3 = kc.reshape({d.b * d.hkv, d.t, d.d}),
         v3 = vc.reshape({d.b * d.hkv, d.t, d.d}), o3 = f.out.reshape({d.b * d.hq, d.t, d.d});
  KILN_DISPATCH_FLOAT(ct, T, {
    T* lse = f.lse.data<T>();
    for_heads(d.b * d.hq, [&](int64_t begin, int64_t end) {
      Tensor scratch = Tensor::empty({kBlockRows * d.t}, ct);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t kv = d.kv_index(i);
        forward_head<T>(mat(q3, i), mat(k3, kv), mat(v3, kv), mat(o3, i), lse + i * d.t, scratch,
                        scale);
      }
    });
  });
  return f;
}

// Per-head views and scratch for the backward of one (batch, query head).
struct HeadGrad {
  Tensor q, k, v, o, go;  // inputs, (T, D)
  Tensor gq, gk, gv;      // outputs, (T, D); gk and gv start at zero and accumulate
  Tensor p, dp;           // scratch, kBlockRows * T each
};

// Backward of one (batch, query head). With P the probabilities and delta_t = sum_d go o:
// gv = P^T go, dS = P * (go v^T - delta), gq = scale dS k, gk = scale dS^T q.
template <typename T>
void backward_head(const HeadGrad& h, const T* lse, T* delta, double scale) {
  const int64_t t = h.q.size(0), dd = h.q.size(1);
  const T* go = h.go.data<T>();
  const T* o = h.o.data<T>();
  for (int64_t r = 0; r < t; ++r) {
    T acc = 0;
    for (int64_t j = 0; j < dd; ++j) acc += go[r * dd + j] * o[r * dd + j];
    delta[r] = acc;
  }
  for (int64_t r0 = 0; r0 < t; r0 += kBlockRows) {
    const int64_t n = std::min(kBlockRows, t - r0), kend = r0 + n;
    Tensor p = scratch_mat(h.p, n, kend), dp = scratch_mat(h.dp, n, kend);
    raw::gemm(rows(h.q, r0, n), rows(h.k, 0, kend), p, false, true, scale);
    T* pp = p.data<T>();
    for (int64_t r = 0; r < n; ++r) {  // recompute the probabilities from the log-sum-exp
      const int64_t valid = r0 + r + 1;
      T* row = pp + r * kend;
      for (int64_t j = 0; j < valid; ++j) row[j] = std::exp(row[j] - lse[r0 + r]);
      for (int64_t j = valid; j < kend; ++j) row[j] = 0;
    }
    Tensor go_b = rows(h.go, r0, n);
    raw::gemm(p, go_b, rows(h.gv, 0, kend), true, false, 1.0, 1.0);
    raw::gemm(go_b, rows(h.v, 0, kend), dp, false, true);
    T* ds = dp.data<T>();
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < kend; ++j) {
        const int64_t x = r * kend + j;
        ds[x] = pp[x] * (ds[x] - delta[r0 + r]);
      }
    }
    raw::gemm(dp, rows(h.k, 0, kend), rows(h.gq, r0, n), false, false, scale);
    raw::gemm(dp, rows(h.q, r0, n), rows(h.gk, 0, kend), true, false, scale, 1.0);
  }
}

struct AttnGrads {
  Tensor gq, gk, gv;  // compute dtype, shapes of q, k, v
};

// Sums the per-query-head (B, Hq, T, D) gradient over each group of Hq / Hkv heads, in a fixed
// order, into (B, Hkv, T, D).
Tensor sum_groups(const Tensor& g, const AttnDims& d) {
  if (d.group() == 1) return g;
  Tensor out = Tensor::empty({d.b, d.hkv, d.t, d.d}, g.dtype());
  const int64_t m = d.t * d.d, group = d.group();
  KILN_DISPATCH_FLOAT(g.dtype(), T, {
    const T* src = g.data<T>();
    T* dst = out.data<T>();
    parallel_for(d.b * d.hkv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* first = src + i * group * m;
        std::copy(first, first + m, dst + i * m);
        for (int64_t gi = 1; gi < group; ++gi)
          for (int64_t x = 0; x < m; ++x) dst[i * m + x] += first[gi * m + x];
      }
    });
  });
  return out;
}

AttnGrads causal_attention_backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const Tensor& out, const Tensor& lse, const Tensor& grad,
                                        const AttnDims& d, double scale) {
  check_cpu(q);
  Tensor qc = raw::to_compute(q).detach();
  const DType ct = qc.dtype();
  Tensor kc = raw::convert(k, ct).detach(), vc = raw::convert(v, ct).detach(),
         oc = raw::convert(out, ct).detach(), gc = raw::convert(grad, ct).detach();
  const int64_t nq = d.b * d.hq, nkv = d.b * d.hkv;
  Tensor gq = Tensor::empty(q.shape(), ct);
  Tensor gk_heads = Tensor::zeros(q.shape(), ct), gv_heads = Tensor::zeros(q.shape(), ct);
  Tensor q3 = qc.reshape({nq, d.t, d.d}), k3 = kc.reshape({nkv, d.t, d.d}),
         v3 = vc.reshape({nkv, d.t, d.d}), o3 = oc.reshape({nq, d.t, d.d}),
         go3 = gc.reshape({nq, d.t, d.d}), gq3 = gq.reshape({nq, d.t, d.d}),
         gk3 = gk_heads.reshape({nq, d.t, d.d}), gv3 = gv_heads.reshape({nq, d.t, d.d});
  KILN_DISPATCH_FLOAT(ct, T, {
    const T* lse_p = lse.data<T>();
    for_heads(nq, [&](int64_t begin, int64_t end) {
      Tensor p = Tensor::empty({kBlockRows * d.t}, ct), dp = Tensor::empty({kBlockRows * d.t}, ct);
      std::vector<T> delta(d.t);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t kv = d.kv_index(i);
        HeadGrad h{mat(q3, i),  mat(k3, kv), mat(v3, kv), mat(o3, i), mat(go3, i),
                   mat(gq3, i), mat(gk3, i), mat(gv3, i), p,          dp};
        backward_head<T>(h, lse_p + i * d.t, delta.data(), scale);
      }
    });
  });
  return {gq, sum_groups(gk_heads, d), sum_groups(gv_heads, d)};
}

class CausalAttentionNode final : public Node {
 public:
  const char* name() const override { return "CausalAttention"; }
  AttnDims dims;
  double scale = 1.0;
  // saved: q, k, v, out (detached, q's dtype), lse (B, Hq, T) compute dtype
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    AttnGrads r = causal_attention_backward_cpu(q, k, v, saved[3], saved[4], g[0], dims, scale);
    return {raw::convert(r.gq, q.dtype()), raw::convert(r.gk, k.dtype()),
            raw::convert(r.gv, v.dtype())};
  }
};

}  // namespace

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        std::optional<double> scale) {
  const AttnDims d = check_attention_args(q, k, v);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(d.d)));
  KILN_CHECK(std::isfinite(s)) << kOp << ": scale must be finite, got " << s;
  AttnForward f = causal_attention_cpu(q, k, v, d, s);
  Tensor out = raw::convert(f.out, q.dtype());
  if (auto n = record<CausalAttentionNode>({&q, &k, &v})) {
    n->dims = d;
    n->scale = s;
    n->saved = {q, k, v, out.detach(), f.lse};
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
