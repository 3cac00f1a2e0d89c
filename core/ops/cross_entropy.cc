// cross_entropy and linear_cross_entropy: argument and target checks, the backward nodes, the CPU
// kernels and the dispatch to the CUDA kernels (core/ops/cross_entropy.cu). The forward keeps each
// row's log-sum-exp; the backward rebuilds softmax from it and the saved logits.
#include "core/ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cpu/elem.h"
#include "core/cpu/fast_math.h"
#include "core/env_switch.h"
#include "core/ops/device_dispatch.h"
#include "core/ops/matmul.h"
#include "core/thread_pool.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
// core/ops/cross_entropy.cu. Target checks read one value back and throw this file's errors.
Tensor cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore,
                             Tensor* lse, int64_t* count);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t ignore, int64_t count, const Tensor& g);
Tensor linear_cross_entropy_forward(const Tensor& x, const Tensor& w, const Tensor& targets,
                                    int64_t ignore, int64_t chunk_rows, bool want_dx, bool want_dw,
                                    Tensor* dx, Tensor* dw, bool dw_acc_dtype);
void scale_by_device_scalar(const Tensor& t, const Tensor& g);  // t *= g[0] in place
// dst = [dst +] src * g[0]: f32, contiguous, one size.
void scale_into_f32(const Tensor& dst, const Tensor& src, const Tensor& g, bool overwrite);
}  // namespace kiln::cuda
#endif

namespace kiln {
namespace {

constexpr const char* kOp = "cross_entropy";

void check_ce_args(const Tensor& logits, const Tensor& targets) {
  check_float_args(kOp, {&logits});
  check_defined(kOp, {&logits, &targets});
  check_dim(kOp, "logits (N, V)", logits, 2);
  check_dim(kOp, "targets (N)", targets, 1);
  KILN_CHECK(targets.dtype() == DType::kI32 || targets.dtype() == DType::kI64)
      << kOp << ": targets must be i32 or i64, got " << targets.str();
  KILN_CHECK(targets.size(0) == logits.size(0))
      << kOp << ": targets " << targets.str() << " do not match logits " << logits.str()
      << " (one target per row)";
  check_same_device(kOp, {&logits, &targets});
}

// The targets as i64, each checked to be in [0, V) or ignore_index. Sets *count to the number of
// rows that are not ignored.
std::vector<int64_t> read_targets(const Tensor& targets, int64_t v, int64_t ignore_index,
                                  int64_t* count) {
  std::vector<int64_t> t = targets.to_ints();
  *count = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore_index) continue;
    KILN_CHECK(t[i] >= 0 && t[i] < v)
        << kOp << ": target " << t[i] << " at row " << i << " is out of range for V = " << v
        << " classes (and is not ignore_index " << ignore_index << ")";
    ++*count;
  }
  return t;
}

struct CeForward {
  double loss = 0;  // mean over counted rows
  Tensor lse;       // (N) compute dtype; log-sum-exp of each row
};

CeForward cross_entropy_cpu(const Tensor& logits, const std::vector<int64_t>& t,
                            int64_t ignore_index, int64_t count) {
  Tensor x = raw::to_compute(logits);
  const int64_t n = logits.size(0), v = logits.size(1);
  CeForward f{0.0, Tensor::empty({n}, x.dtype())};
  std::vector<double> row_loss(n, 0.0);
  KILN_DISPATCH_FLOAT(x.dtype(), T, {
    const T* px = x.data<T>();
    T* lse = f.lse.data<T>();
    parallel_for(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(v, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t i = begin; i < end; ++i) {
                     const T* row = px + i * v;
                     T m = v > 0 ? *std::max_element(row, row + v) : T(0);
                     // 16 partial sums (vectorisable), added in a fixed order.
                     T part[16] = {};
                     int64_t j = 0;
                     for (; j + 16 <= v; j += 16)
                       for (int l = 0; l < 16; ++l) part[l] += cpu::exp_fast(row[j + l] - m);
                     for (; j < v; ++j) part[j % 16] += cpu::exp_fast(row[j] - m);
                     T sum = 0;
                     for (int l = 0; l < 16; ++l) sum += part[l];
                     lse[i] = m + std::log(sum);
                     if (t[i] != ignore_index) row_loss[i] = lse[i] - row[t[i]];
                   }
                 });
  });
  double total = 0;  // summed in row order: independent of the thread split
  for (double l : row_loss) total += l;
  f.loss = count > 0 ? total / static_cast<double>(count) : 0.0;
  return f;
}

// d loss / d logits = g / count * (softmax(logits) - onehot(target)) on counted rows, 0 elsewhere.
Tensor cross_entropy_backward_cpu(const Tensor& logits, const Tensor& lse,
                                  const std::vector<int64_t>& t, int64_t ignore_index,
                                  int64_t count, double g) {
  Tensor x = raw::to_compute(logits);
  const int64_t n = logits.size(0), v = logits.size(1);
  Tensor gx = Tensor::empty(logits.shape(), x.dtype());
  KILN_DISPATCH_FLOAT(x.dtype(), T, {
    const T* px = x.data<T>();
    const T* pl = lse.data<T>();
    T* pg = gx.data<T>();
    const T w = count > 0 ? static_cast<T>(g / static_cast<double>(count)) : T(0);
    parallel_for(n, std::max<int64_t>(1, 16384 / std::max<int64_t>(v, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t i = begin; i < end; ++i) {
                     T* gr = pg + i * v;
                     if (t[i] == ignore_index) {
                       std::fill(gr, gr + v, T(0));
                       continue;
                     }
                     const T* row = px + i * v;
                     for (int64_t j = 0; j < v; ++j) gr[j] = w * cpu::exp_fast(row[j] - pl[i]);
                     gr[t[i]] -= w;
                   }
                 });
  });
  return gx;
}

class CrossEntropyNode final : public Node {
 public:
  const char* name() const override { return "CrossEntropy"; }
  int64_t ignore_index = -100;
  int64_t count = 0;  // rows not ignored
  // saved: logits (N, V), targets (N) (validated in the forward), lse (N) compute dtype
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    const Tensor& logits = saved[0];
#if KILN_WITH_CUDA
    if (logits.device().is_cuda())
      return {cuda::cross_entropy_backward(logits, saved[1], saved[2], ignore_index, count, g[0])};
#endif
    Tensor gx = cross_entropy_backward_cpu(logits, saved[2], saved[1].to_ints(), ignore_index,
                                           count, g[0].item());
    return {raw::convert(gx, logits.dtype())};
  }
};

}  // namespace

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  check_ce_args(logits, targets);
  int64_t count = 0;
  CeForward f;
  Tensor out;
  if (ops::on_cuda(kOp, "logits", logits)) {
#if KILN_WITH_CUDA
    out = cuda::cross_entropy_forward(logits, targets, ignore_index, &f.lse, &count);
#endif
  } else {
    std::vector<int64_t> t = read_targets(targets, logits.size(1), ignore_index, &count);
    f = cross_entropy_cpu(logits, t, ignore_index, count);
    out = Tensor::scalar(f.loss, raw::compute_dtype(logits.dtype()));
  }
  if (auto n = record<CrossEntropyNode>({&logits})) {
    n->ignore_index = ignore_index;
    n->count = count;
    n->saved = {logits, targets, f.lse};
    set_history(out, n);
  }
  return out;
}

namespace {

// KILN_CE_DIRECT_WGRAD=0: the classifier's weight gradient rounded to the weight's dtype in the
// forward and scaled there in the backward, as before.
EnvSwitch g_ce_direct("KILN_CE_DIRECT_WGRAD", /*default_on=*/true);

// The fused classifier + loss on CUDA: the forward already computed the gradients of the loss for
// an upstream gradient of 1; backward scales them by the actual one (on the device, no sync).
// With KILN_CE_DIRECT_WGRAD (default) the weight gradient stays in the f32 it was accumulated in,
// and the backward writes g * dW straight into the weight's f32 .grad where autograd offers it
// (accumulation_target: over a stale .grad, else added), instead of rounding dW to 16 bits, scaling
// it and adding it into the .grad (three passes over a (V, C) matrix less a step).
class LinearCrossEntropyNode final : public Node {
 public:
  const char* name() const override { return "LinearCrossEntropy"; }
  DType w_dtype = DType::kF32;  // the weight's dtype (saved[1]'s when it is not f32 accumulated)
  // saved: dx (N, C) or undefined, dw (V, C) or undefined. next: x, weight.
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    std::vector<Tensor> out = {saved[0], saved[1]};
#if KILN_WITH_CUDA
    if (out[0].defined()) cuda::scale_by_device_scalar(out[0], g[0]);
    Tensor& dw = out[1];
    if (dw.defined() && dw.dtype() != w_dtype) {  // f32 accumulated: into the .grad if offered
      bool fresh = false;
      const Tensor into = accumulation_target(next[1], dw.shape(), dw.device(), &fresh);
      if (into.defined()) {
        cuda::scale_into_f32(into, dw, g[0], fresh);
        dw = accumulated_marker();
        return out;
      }
      dw = raw::convert(dw, w_dtype);
    }
    if (dw.defined()) cuda::scale_by_device_scalar(dw, g[0]);
#else
    (void)g;  // the node is only recorded on CUDA
#endif
    return out;
  }
};

void check_linear_ce_args(const Tensor& x, const Tensor& w, const Tensor& targets,
                          int64_t chunk_rows) {
  const char* op = "linear_cross_entropy";
  check_float_args(op, {&x, &w});
  check_defined(op, {&x, &w, &targets});
  check_dim(op, "x (N, C)", x, 2);
  check_dim(op, "weight (V, C)", w, 2);
  check_dim(op, "targets (N)", targets, 1);
  KILN_CHECK(w.size(1) == x.size(1))
      << op << ": weight " << w.str() << " must be (V, " << x.size(1) << ") to match x " << x.str();
  KILN_CHECK(targets.dtype() == DType::kI32 || targets.dtype() == DType::kI64)
      << op << ": targets must be i32 or i64, got " << targets.str();
  KILN_CHECK(targets.size(0) == x.size(0))
      << op << ": targets " << targets.str() << " do not match x " << x.str() << " (one per row)";
  check_same_device(op, {&x, &w, &targets});
  KILN_CHECK(chunk_rows >= 0) << op << ": chunk_rows must be >= 0 (0: automatic), got "
                              << chunk_rows;
}

}  // namespace

Tensor linear_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                            int64_t ignore_index, int64_t chunk_rows) {
  check_linear_ce_args(x, weight, targets, chunk_rows);
  if (!ops::on_cuda("linear_cross_entropy", "x", x))
    return cross_entropy(linear(x, weight), targets, ignore_index);
  Tensor loss, dx, dw;
#if KILN_WITH_CUDA
  auto n = record<LinearCrossEntropyNode>({&x, &weight});
  const bool want_dx = n && n->next[0].fn != nullptr, want_dw = n && n->next[1].fn != nullptr;
  const bool dw_f32 = want_dw && g_ce_direct.on() && weight.dtype() != DType::kF64 &&
                      weight.dtype() != DType::kF32 &&
                      offers_accumulation_target(n->next[1], weight.shape(), weight.device());
  loss = cuda::linear_cross_entropy_forward(x, weight, targets, ignore_index, chunk_rows, want_dx,
                                            want_dw, &dx, &dw, dw_f32);
  if (n) {
    n->w_dtype = weight.dtype();
    n->saved = {dx, dw};
    set_history(loss, n);
  }
#endif
  return loss;
}

}  // namespace kiln
