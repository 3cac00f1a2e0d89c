// rotary_embedding: argument checks, the backward node (the inverse rotation), the CPU kernel and
// the dispatch to the CUDA kernel (core/ops/rope.cu).
#include "core/ops/rope.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/rope_index.h"
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

using rope_index::OutLayout;

// An empty (B, H, T, D) tensor shaped like x (B, H, T, D), laid out as `layout`.
Tensor empty_in(const Tensor& x, OutLayout layout, DType dtype) {
  if (layout == OutLayout::kBHTD) return Tensor::empty(x.shape(), dtype, x.device());
  return Tensor::empty({x.size(0), x.size(2), x.size(1), x.size(3)}, dtype, x.device())
      .permute({0, 2, 1, 3});
}

// Rotates x (B, H, T, D) by +angle, or by -angle when `inverse`. Returns x's compute dtype, laid
// out as `layout`.
Tensor rotary_embedding_cpu(const Tensor& x, double theta, int64_t offset, bool inverse,
                            OutLayout layout) {
  Tensor xc = raw::to_compute(x);
  Tensor out = empty_in(x, layout, xc.dtype());
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
  return out;
}

// t in `dtype`, keeping its layout (raw::convert would make it contiguous).
Tensor keep_layout_as(const Tensor& t, DType dtype, OutLayout layout) {
  if (t.dtype() == dtype) return t;
  Tensor out = empty_in(t, layout, dtype);
  raw::copy(out, t);
  return out;
}

// Either device; returns `dtype`, laid out as `layout`.
Tensor rotary_embedding_any(const Tensor& x, double theta, int64_t offset, bool inverse,
                            DType dtype, OutLayout layout = OutLayout::kBHTD) {
#if KILN_WITH_CUDA
  if (x.device().is_cuda()) {
    return keep_layout_as(
        cuda::rope_forward(x, theta, offset, inverse, cuda::RopeImpl::kEnv, layout), dtype, layout);
  }
#endif
  return keep_layout_as(rotary_embedding_cpu(x, theta, offset, inverse, layout), dtype, layout);
}

std::atomic<int> g_grad_layout_override{-1};  // tests: 1 on, 0 off, -1 none

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
  OutLayout grad_layout = OutLayout::kBHTD;  // the layout of x's gradient
  // The rotation is orthogonal: its transpose is the rotation by the opposite angle.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    return {rotary_embedding_any(g[0], theta, offset, /*inverse=*/true, in_dtype, grad_layout)};
  }
};

}  // namespace

bool rope_grad_follows_input_layout(const Device& device) {
  const int forced = g_grad_layout_override.load();
  if (forced >= 0) return forced == 1;
  if (!device.is_cuda()) return true;
  static const bool on = [] {
    const char* e = std::getenv("KILN_ROPE_GRAD_BTHD");
    return e != nullptr && std::strcmp(e, "1") == 0;
  }();
  return on;
}

void set_rope_grad_layout_override(int on) { g_grad_layout_override.store(on); }

Tensor rotary_embedding(const Tensor& x, double theta, int64_t position_offset) {
  check_rope_args(x, theta, position_offset);
  ops::on_cuda(kOp, "x", x);  // a CUDA tensor without a CUDA backend is an error here
  Tensor out = rotary_embedding_any(x, theta, position_offset, false, x.dtype());
  if (auto n = record<RotaryEmbeddingNode>({&x})) {
    n->theta = theta;
    n->offset = position_offset;
    n->in_dtype = x.dtype();
    if (heads_inner(x) && rope_grad_follows_input_layout(x.device()))
      n->grad_layout = OutLayout::kBTHD;
    set_history(out, n);
  }
  return out;
}

}  // namespace kiln
