// causal_attention: argument checks, the backward node, the CPU kernels and the CUDA dispatch.
// The CPU kernels work per (batch, head) on blocks of kBlockRows query rows: one GEMM for the
// block's scores against the keys it may see (causality skips the rest), a stable softmax per row
// in the compute dtype, one GEMM for the output. Forward saves the per-row log-sum-exp; backward
// recomputes the probabilities from it. CUDA tensors go to cuDNN's fused attention for bf16/f16
// when cuDNN builds a plan for the shape (core/cuda/cudnn_sdpa.h), else to the kiln kernel
// (attention.cu); KILN_ATTENTION=cudnn|kiln forces one (auto, the default, picks as above).
#include "core/ops/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/cpu/fast_math.h"
#include "core/ops/matmul.h"
#include "core/ops/view.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
#include "core/cuda/cudnn_sdpa.h"
#include "core/cuda/runtime.h"
#include "core/ops/attention_cuda.h"
#endif

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
  KILN_CHECK(q.device().is_cpu()) << kOp << ": internal: CPU kernel called with " << q.str();
}

// Runs fn over [0, heads): one head per task when there are enough heads to occupy the pool (each
// GEMM then runs on its task's thread: raw::gemm does not split inside a parallel region), else in
// order on this thread with raw::gemm splitting each GEMM over the pool.
void for_heads(int64_t heads, const std::function<void(int64_t, int64_t)>& fn) {
  if (heads >= num_threads() && num_threads() > 1) {
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
      row[j] = cpu::exp_fast(row[j] - m);
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
      for (int64_t j = 0; j < valid; ++j) row[j] = cpu::exp_fast(row[j] - lse[r0 + r]);
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

// ---- CUDA dispatch ----

// A CUDA tensor reaching causal_attention when no CUDA backend serves it is a clear error.
void check_cuda_backend(const Tensor& q) {
  KILN_CHECK(cuda_available()) << kOp << ": " << q.str()
                               << " is a CUDA tensor but the CUDA backend is not available ("
                               << "kiln built without CUDA, or no GPU visible)";
  KILN_CHECK(q.dtype() != DType::kF64)
      << kOp << ": f64 attention runs on the CPU only, got q " << q.str();
}

#if KILN_WITH_CUDA

enum class CudaChoice { kAuto, kCudnn, kKiln };

// KILN_ATTENTION: unset, "" or "auto" -> kAuto; "cudnn"; "kiln". Read on every call so tests can
// switch it.
CudaChoice cuda_choice() {
  const char* e = std::getenv("KILN_ATTENTION");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "auto") == 0) return CudaChoice::kAuto;
  if (std::strcmp(e, "cudnn") == 0) return CudaChoice::kCudnn;
  if (std::strcmp(e, "kiln") == 0) return CudaChoice::kKiln;
  KILN_CHECK(false) << "KILN_ATTENTION must be cudnn, kiln or auto, got '" << e << "'";
  return CudaChoice::kAuto;
}

thread_local attention_cuda::Impl g_last_forward = attention_cuda::Impl::kNone;
thread_local attention_cuda::Impl g_last_backward = attention_cuda::Impl::kNone;

// Whether to try cuDNN first; throws when cuDNN is forced for a dtype it never serves.
bool try_cudnn(CudaChoice c, const Tensor& q) {
  const bool half = q.dtype() == DType::kBF16 || q.dtype() == DType::kF16;
  KILN_CHECK(half || c != CudaChoice::kCudnn)
      << kOp << ": KILN_ATTENTION=cudnn, but cuDNN attention serves bf16 and f16 only, got q "
      << q.str();
  return half && c != CudaChoice::kKiln;
}

// t itself when its last dim has unit stride (what both CUDA paths read), else a contiguous copy.
Tensor unit_d(const Tensor& t) { return t.strides()[3] == 1 ? t : raw::contiguous(t); }

struct CudaForward {
  Tensor out;      // (B, Hq, T, D) q's dtype
  Tensor lse;      // (B, Hq, T) f32
  Tensor q, k, v;  // the inputs as the kernels read them (unit stride in D), for backward
};

// An uninitialised (B, H, T, D) tensor whose memory is laid out (B, T, H, D): permuted back and
// merged to (B, T, H*D) (the model's merge_heads) it is contiguous, so no copy is made there.
Tensor empty_bthd(const Shape& s, DType dt, Device dev) {
  return Tensor::empty({s[0], s[2], s[1], s[3]}, dt, dev).permute({0, 2, 1, 3});
}

// Whether q, k, v are the three consecutive thirds of one packed (B, T, 3, H, D) projection seen as
// (B, H, T, D) views (GPT-2's c_attn output through split and split_heads).
bool packed_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  const int64_t h = q.size(1), t = q.size(2), d = q.size(3);
  const Shape want = {t * 3 * h * d, d, 3 * h * d, 1};
  return k.shape() == q.shape() && v.shape() == q.shape() && q.storage() == k.storage() &&
         q.storage() == v.storage() && q.strides() == want && k.strides() == want &&
         v.strides() == want && k.offset() == q.offset() + h * d &&
         v.offset() == q.offset() + 2 * h * d;
}

CudaForward causal_attention_cuda(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                  const AttnDims& d, double scale) {
  check_cuda_backend(q_in);
  const Tensor q = unit_d(q_in), k = unit_d(k_in), v = unit_d(v_in);
  CudaForward f{Tensor::empty(q.shape(), q.dtype(), q.device()),
                Tensor::empty({d.b, d.hq, d.t}, DType::kF32, q.device()), q.detach(), k.detach(),
                v.detach()};
  if (q.numel() == 0) return f;
  const CudaChoice c = cuda_choice();
  if (try_cudnn(c, q)) {
    // cuDNN writes the output (B, T, H, D)-laid-out (no copy in merge_heads); should an engine
    // refuse that layout, the contiguous one is tried before the kiln kernel.
    Tensor bthd = empty_bthd(q.shape(), q.dtype(), q.device());
    absl::Status st = cuda::sdpa_forward(q, k, v, scale, bthd, f.lse);
    if (st.ok()) f.out = bthd;
    if (!st.ok()) st = cuda::sdpa_forward(q, k, v, scale, f.out, f.lse);
    if (st.ok()) {
      g_last_forward = attention_cuda::Impl::kCudnn;
      return f;
    }
    KILN_CHECK(c != CudaChoice::kCudnn)
        << kOp << ": KILN_ATTENTION=cudnn, but cuDNN cannot serve q " << q.str() << ": "
        << st.message();
  }
  attention_cuda::kiln_attention_forward(q, k, v, scale, f.out, f.lse);
  g_last_forward = attention_cuda::Impl::kKiln;
  return f;
}

AttnGrads causal_attention_backward_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const Tensor& out, const Tensor& lse, const Tensor& grad,
                                         double scale) {
  check_cuda_backend(q);
  // dout as it comes (cuDNN reads any strides with unit stride in D): from merge_heads it is a
  // (B, T, H, D)-laid-out view.
  const Tensor go = unit_d(grad.dtype() == q.dtype() ? grad : raw::convert(grad, q.dtype()));
  AttnGrads r{Tensor::empty(q.shape(), q.dtype(), q.device()),
              Tensor::empty(k.shape(), q.dtype(), q.device()),
              Tensor::empty(v.shape(), q.dtype(), q.device())};
  if (q.numel() == 0) return r;
  const CudaChoice c = cuda_choice();
  if (try_cudnn(c, q)) {
    absl::Status st = absl::UnknownError("not tried");
    if (packed_qkv(q, k, v)) {
      // The gradients go into one (B, T, 3 H D) buffer laid out as q, k, v are: split's backward
      // passes it on as the gradient of the packed projection without concatenating.
      const int64_t hd = q.size(1) * q.size(3);
      Tensor buf = Tensor::empty({q.size(0), q.size(2), 3 * hd}, q.dtype(), q.device());
      auto third = [&](int64_t i) {
        return unflatten(buf.narrow(2, i * hd, hd), 2, {q.size(1), q.size(3)})
            .permute({0, 2, 1, 3});
      };
      AttnGrads p{third(0), third(1), third(2)};
      st = cuda::sdpa_backward(q, k, v, out, go, lse, scale, cuda::deterministic(), p.gq, p.gk,
                               p.gv);
      if (st.ok()) r = p;
    }
    if (!st.ok())
      st = cuda::sdpa_backward(q, k, v, out, go, lse, scale, cuda::deterministic(), r.gq, r.gk,
                               r.gv);
    if (st.ok()) {
      g_last_backward = attention_cuda::Impl::kCudnn;
      return r;
    }
    KILN_CHECK(c != CudaChoice::kCudnn)
        << kOp << ": KILN_ATTENTION=cudnn, but cuDNN cannot serve the backward of q " << q.str()
        << ": " << st.message();
  }
  attention_cuda::kiln_attention_backward(q, k, v, out, go, lse, scale, r.gq, r.gk, r.gv);
  g_last_backward = attention_cuda::Impl::kKiln;
  return r;
}

#else  // !KILN_WITH_CUDA

struct CudaForward {
  Tensor out, lse, q, k, v;
};
CudaForward causal_attention_cuda(const Tensor& q, const Tensor&, const Tensor&, const AttnDims&,
                                  double) {
  check_cuda_backend(q);  // throws: no CUDA backend in this build
  return {};
}
AttnGrads causal_attention_backward_cuda(const Tensor& q, const Tensor&, const Tensor&,
                                         const Tensor&, const Tensor&, const Tensor&, double) {
  check_cuda_backend(q);
  return {};
}

#endif  // KILN_WITH_CUDA

class CausalAttentionNode final : public Node {
 public:
  const char* name() const override { return "CausalAttention"; }
  AttnDims dims;
  double scale = 1.0;
  // saved: q, k, v (unit stride in D on CUDA), out (detached, q's dtype), lse (B, Hq, T): the
  // compute dtype on the CPU, f32 on CUDA
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor &q = saved[0], &k = saved[1], &v = saved[2];
    if (q.device().is_cuda())  // gradients come back in q's dtype already
      return unpack(causal_attention_backward_cuda(q, k, v, saved[3], saved[4], g[0], scale));
    AttnGrads r = causal_attention_backward_cpu(q, k, v, saved[3], saved[4], g[0], dims, scale);
    return {raw::convert(r.gq, q.dtype()), raw::convert(r.gk, k.dtype()),
            raw::convert(r.gv, v.dtype())};
  }

 private:
  static std::vector<Tensor> unpack(const AttnGrads& r) { return {r.gq, r.gk, r.gv}; }
};

}  // namespace

#if KILN_WITH_CUDA
namespace attention_cuda {
Impl last_forward_impl() { return g_last_forward; }
Impl last_backward_impl() { return g_last_backward; }
const char* impl_name(Impl i) {
  switch (i) {
    case Impl::kCudnn:
      return "cudnn";
    case Impl::kKiln:
      return "kiln";
    default:
      return "none";
  }
}
}  // namespace attention_cuda
#endif

Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                        std::optional<double> scale) {
  const AttnDims d = check_attention_args(q, k, v);
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(d.d)));
  KILN_CHECK(std::isfinite(s)) << kOp << ": scale must be finite, got " << s;
  Tensor out, lse, qs = q, ks = k, vs = v;
  if (q.device().is_cuda()) {
    CudaForward f = causal_attention_cuda(q, k, v, d, s);
    out = f.out;
    lse = f.lse;
    qs = f.q;  // the unit-stride tensors the kernels read: backward need not copy again
    ks = f.k;
    vs = f.v;
  } else {
    AttnForward f = causal_attention_cpu(q, k, v, d, s);
    out = raw::convert(f.out, q.dtype());
    lse = f.lse;
  }
  if (auto n = record<CausalAttentionNode>({&q, &k, &v})) {
    n->dims = d;
    n->scale = s;
    n->saved = {qs, ks, vs, out.detach(), lse};
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
