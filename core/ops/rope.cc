// rotary_embedding: argument checks, the backward node (the inverse rotation), the CPU kernel and
// the dispatch to the CUDA kernel (core/ops/rope.cu).
#include "core/ops/rope.h"

#include <cmath>
#include <optional>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/env_switch.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/rope_index.h"
#include "core/ops/view.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
#include "core/ops/rope_cuda.h"  // cuda::rope_forward (core/ops/rope.cu)
#endif

namespace kiln {
namespace {

constexpr const char* kOp = "rotary_embedding";

void check_rope_args(const Tensor& x, double theta, int64_t position_offset) {
  check_float_args(kOp, {&x});
  check_dim(kOp, "x (B, H, T, D)", x, 4);
  KILN_CHECK(x.size(3) % 2 == 0) << kOp << ": head dim D must be even, got x " << x.str();
  KILN_CHECK(theta > 0 && std::isfinite(theta)) << kOp << ": theta must be positive, got " << theta;
  KILN_CHECK(position_offset >= 0)
      << kOp << ": position_offset must be >= 0, got " << position_offset;
}

// cos and sin of the angle of position (offset + t) and frequency i, as (T, D/2) tables.
template <typename T>
void angle_tables(int64_t t_len, int64_t d, double theta, int64_t offset, std::vector<T>& cos_t,
                  std::vector<T>& sin_t) {
  const int64_t half = d / 2;
  cos_t.resize(t_len * half);
  sin_t.resize(t_len * half);
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq =
        1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(d));
    for (int64_t t = 0; t < t_len; ++t) {
      const double a = static_cast<double>(offset + t) * inv_freq;
      cos_t[t * half + i] = static_cast<T>(std::cos(a));
      sin_t[t * half + i] = static_cast<T>(std::sin(a));
    }
  }
}

// An empty (B, H, T, D) tensor of x's shape, laid out (B, H, T, D) or, with `bthd`, over
// (B, T, H, D) memory.
Tensor empty_like_rope(const Tensor& x, bool bthd, DType dtype) {
  if (!bthd) return Tensor::empty(x.shape(), dtype, x.device());
  return Tensor::empty({x.size(0), x.size(2), x.size(1), x.size(3)}, dtype, x.device())
      .permute({0, 2, 1, 3});
}

// Writes x (B, H, T, D) rotated by +angle (by -angle when `inverse`) into out (x's shape, x's
// compute dtype, D innermost, any other strides).
void rotary_embedding_cpu(const Tensor& x, const Tensor& out, double theta, int64_t offset,
                          bool inverse) {
  Tensor xc = raw::to_compute(x);
  KILN_CHECK(out.dtype() == xc.dtype() && out.strides()[3] == 1) << kOp << ": internal layout";
  const int64_t t_len = x.size(2), d = x.size(3), half = d / 2, n_heads = x.size(1);
  const int64_t ob = out.strides()[0], oh = out.strides()[1], ot = out.strides()[2];
  const int64_t n_rows = x.numel() / std::max<int64_t>(d, 1);
  KILN_DISPATCH_FLOAT(xc.dtype(), T, {
    std::vector<T> cos_t, sin_t;
    angle_tables<T>(t_len, d, theta, offset, cos_t, sin_t);
    const T sign = inverse ? T(-1) : T(1);
    const T* px = xc.data<T>();
    T* po = out.data<T>();
    parallel_for(n_rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r) {
                     const T* c = cos_t.data() + (r % t_len) * half;
                     const T* s = sin_t.data() + (r % t_len) * half;
                     const T* xr = px + r * d;
                     const int64_t t = r % t_len, h = r / t_len % n_heads;
                     T* o = po + r / t_len / n_heads * ob + h * oh + t * ot;
                     for (int64_t i = 0; i < half; ++i) {
                       const T sn = sign * s[i];
                       o[i] = xr[i] * c[i] - xr[i + half] * sn;
                       o[i + half] = xr[i + half] * c[i] + xr[i] * sn;
                     }
                   }
                 });
  });
}

// Either device: x rotated written into out (x's shape, any dtype, D innermost).
void rotary_embedding_into(const Tensor& x, const Tensor& out, double theta, int64_t offset,
                           bool inverse) {
  const DType direct = x.device().is_cuda() ? x.dtype() : raw::compute_dtype(x.dtype());
  Tensor dst = out.dtype() == direct && out.strides()[3] == 1
                   ? out
                   : Tensor::empty(x.shape(), direct, x.device());
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) {
    cuda::rope_into(x, dst, theta, offset, inverse);
  } else {
    rotary_embedding_cpu(x, dst, theta, offset, inverse);
  }
#else
  rotary_embedding_cpu(x, dst, theta, offset, inverse);
#endif
  if (dst.storage() != out.storage() || dst.offset() != out.offset()) raw::copy(out, dst);
}

// Either device; returns `dtype`, (B, H, T, D) contiguous or, with `bthd`, over (B, T, H, D)
// memory.
Tensor rotary_embedding_any(const Tensor& x, double theta, int64_t offset, bool inverse,
                            DType dtype, bool bthd = false) {
  Tensor out = empty_like_rope(x, bthd, dtype);
  rotary_embedding_into(x, out, theta, offset, inverse);
  return out;
}

EnvSwitch g_grad_bthd("KILN_ROPE_GRAD_BTHD", true);  // CUDA only; the CPU is always on

// x's heads are inner in memory (H's stride below T's), as in split_heads' view of a
// (B, T, H * D) projection.
bool heads_inner(const Tensor& x) {
  return x.size(1) > 1 && x.size(2) > 1 && x.strides()[1] < x.strides()[2];
}

class RotaryEmbeddingNode final : public Node {
 public:
  const char* name() const override { return "RotaryEmbedding"; }
  double theta = 10000.0;
  int64_t offset = 0;
  DType in_dtype = DType::kF32;
  bool grad_bthd = false;  // x's gradient over (B, T, H, D) memory
  // The rotation is orthogonal: its transpose is the rotation by the opposite angle.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {rotary_embedding_any(g[0], theta, offset, /*inverse=*/true, in_dtype, grad_bthd)};
  }
};

// The (B, H, T, D) view of heads [h0, h0 + h) of a packed (B, T, W) tensor, D = head dim (a view
// whatever the strides, never a copy: the backward writes through it). No autograd.
Tensor heads_of(const Tensor& packed, int64_t h0, int64_t h, int64_t d) {
  NoGradGuard ng;
  Tensor v = unflatten(packed.narrow(2, h0 * d, h * d), 2, {h, d}).permute({0, 2, 1, 3});
  KILN_CHECK(v.storage() == packed.storage()) << "rope_qkv_packed: internal: not a view";
  return v;
}

// rope_qkv_packed: next = {qkv}; outputs q, k, v.
class RopeQkvPackedNode final : public Node {
 public:
  const char* name() const override { return "RopeQkvPacked"; }
  double theta = 10000.0;
  int64_t offset = 0, heads = 0, kv_heads = 0, head_dim = 0;
  Shape in_shape;
  DType in_dtype = DType::kF32;
  // One (B, T, W) gradient: dq and dk rotated back into their columns, dv copied into its own;
  // the columns of an output that got no gradient are zero.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    NoGradGuard ng;
    Tensor out = Tensor::empty(in_shape, in_dtype, g_device(g));
    const int64_t h0[3] = {0, heads, heads + kv_heads}, h[3] = {heads, kv_heads, kv_heads};
    for (int i = 0; i < 3; ++i) {
      Tensor dst = heads_of(out, h0[i], h[i], head_dim);
      if (!g[i].defined()) {
        raw::fill(dst, 0.0);
      } else if (i < 2) {
        rotary_embedding_into(g[i], dst, theta, offset, /*inverse=*/true);
      } else {
        raw::copy(dst, g[i]);
      }
    }
    return {out};
  }

 private:
  static Device g_device(const std::vector<Tensor>& g) {
    for (const Tensor& t : g)
      if (t.defined()) return t.device();
    KILN_CHECK(false) << "RopeQkvPacked: backward without any gradient";
    return Device::cpu();
  }
};

}  // namespace

QkvHeads rope_qkv_packed(const Tensor& qkv, int64_t heads, int64_t kv_heads, double theta,
                         int64_t position_offset) {
  const char* op = "rope_qkv_packed";
  check_float_args(op, {&qkv});
  check_dim(op, "qkv (B, T, W)", qkv, 3);
  KILN_CHECK(heads > 0 && kv_heads > 0 && qkv.size(2) % (heads + 2 * kv_heads) == 0)
      << op << ": width " << qkv.size(2) << " of " << qkv.str() << " is not (" << heads << " + 2 x "
      << kv_heads << ") heads of one size";
  const int64_t d = qkv.size(2) / (heads + 2 * kv_heads);
  QkvHeads r;
  {
    NoGradGuard ng;
    const Tensor q_in = heads_of(qkv, 0, heads, d), k_in = heads_of(qkv, heads, kv_heads, d);
    check_rope_args(q_in, theta, position_offset);
    ops::on_cuda(op, "qkv", qkv);
    r.q = rotary_embedding_any(q_in, theta, position_offset, false, qkv.dtype());
    r.k = rotary_embedding_any(k_in, theta, position_offset, false, qkv.dtype());
    r.v = raw::contiguous(qkv.narrow(2, (heads + kv_heads) * d, kv_heads * d));
    r.v = heads_of(r.v, 0, kv_heads, d);
  }
  if (auto n = record<RopeQkvPackedNode>({&qkv})) {
    n->theta = theta;
    n->offset = position_offset;
    n->heads = heads;
    n->kv_heads = kv_heads;
    n->head_dim = d;
    n->in_shape = qkv.shape();
    n->in_dtype = qkv.dtype();
    set_history(r.q, n, 0);
    set_history(r.k, n, 1);
    set_history(r.v, n, 2);
  }
  return r;
}

bool rope_grad_follows_input_layout(const Device& device) {
  if (const std::optional<bool> f = g_grad_bthd.forced()) return *f;
  return !device.is_cuda() || g_grad_bthd.env();
}

void set_rope_grad_layout_override(int on) { g_grad_bthd.force(on); }

Tensor rotary_embedding(const Tensor& x, double theta, int64_t position_offset) {
  check_rope_args(x, theta, position_offset);
  ops::on_cuda(kOp, "x", x);  // a CUDA tensor without a CUDA backend is an error here
  Tensor out = rotary_embedding_any(x, theta, position_offset, false, x.dtype());
  if (auto n = record<RotaryEmbeddingNode>({&x})) {
    n->theta = theta;
    n->offset = position_offset;
    n->in_dtype = x.dtype();
    n->grad_bthd = heads_inner(x) && rope_grad_follows_input_layout(x.device());
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
