// Vocab-parallel embedding (masked lookup + reduction over tp) and the vocab-parallel fused
// classifier + cross-entropy: its forward keeps each row's global log-sum-exp; the backward
// recomputes this rank's logits from x and its weight rows and forms softmax - one-hot from them.
#include "parallel/tensor_parallel/vocab_parallel.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/ops/embedding.h"
#include "core/ops/matmul.h"
#include "parallel/tensor_parallel/mappings.h"

namespace kiln::parallel::tp {
namespace {

constexpr const char* kCe = "vocab_parallel_cross_entropy";

// This rank's logits x W_r^T as a contiguous CPU tensor of f64 values (read on the host).
std::vector<double> local_logits(const Tensor& x, const Tensor& w) {
  return matmul(x, w, false, true).to(DType::kF64).to(Device::cpu()).to_vector();
}

// A host f64 tensor all-reduced over tp on the communicator's device (NCCL takes GPU tensors).
Tensor reduced(const Tensor& host, Communicator& tp, ReduceOp op) {
  Tensor t = host.to(tp.device()).contiguous();
  tp.all_reduce(t, op);
  return t.to(Device::cpu()).contiguous();
}

struct CeRows {
  std::vector<int64_t> targets;
  std::vector<double> lse;  // (N) log-sum-exp of each row over the whole vocabulary
  int64_t count = 0;        // rows not ignored
  double loss = 0;
};

CeRows ce_forward(const Tensor& x, const Tensor& w, const Tensor& targets, Communicator& tp,
                  int64_t ignore, int64_t start, int64_t v_total) {
  const int64_t n = x.size(0), v = w.size(0);
  CeRows r;
  r.targets = targets.to_ints();
  for (size_t i = 0; i < r.targets.size(); ++i) {
    const int64_t t = r.targets[i];
    if (t == ignore) continue;
    KILN_CHECK(t >= 0 && t < v_total) << kCe << ": target " << t << " at row " << i
                                      << " is out of range for V = " << v_total << " classes";
    ++r.count;
  }
  const std::vector<double> z = local_logits(x, w);
  Tensor mx = Tensor::empty({n}, DType::kF64);
  for (int64_t i = 0; i < n; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < v; ++j) m = std::max(m, z[i * v + j]);
    mx.data<double>()[i] = m;
  }
  if (tp.size() > 1) mx = reduced(mx, tp, ReduceOp::kMax);
  const double* pm = mx.data<double>();
  // Rows 0..n-1: sum of exp(z - max); rows n..2n-1: the target logit where this rank holds it.
  Tensor st = Tensor::zeros({2 * n}, DType::kF64);
  for (int64_t i = 0; i < n; ++i) {
    double* ps = st.data<double>();
    for (int64_t j = 0; j < v; ++j) ps[i] += std::exp(z[i * v + j] - pm[i]);
    const int64_t t = r.targets[i] - start;
    if (r.targets[i] != ignore && t >= 0 && t < v) ps[n + i] = z[i * v + t];
  }
  if (tp.size() > 1) st = reduced(st, tp, ReduceOp::kSum);
  const double* ps = st.data<double>();
  r.lse.resize(n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    r.lse[i] = pm[i] + std::log(ps[i]);
    if (r.targets[i] != ignore) total += r.lse[i] - ps[n + i];
  }
  r.loss = r.count > 0 ? total / static_cast<double>(r.count) : 0.0;
  return r;
}

class VocabParallelCeNode final : public Node {
 public:
  const char* name() const override { return "VocabParallelCrossEntropy"; }
  CeRows rows;
  int64_t start = 0, ignore = -100;
  // saved: x (N, C), w (V/tp, C)
  std::vector<Tensor> backward(const std::vector<Tensor>& g) override {
    NoGradGuard ng;
    const Tensor &x = saved[0], &w = saved[1];
    const int64_t n = x.size(0), v = w.size(0);
    const double scale =
        rows.count > 0 ? g[0].to(Device::cpu()).item() / static_cast<double>(rows.count) : 0.0;
    std::vector<double> d = local_logits(x, w);
    for (int64_t i = 0; i < n; ++i) {
      const bool ignored = rows.targets[i] == ignore;
      const int64_t t = rows.targets[i] - start;
      for (int64_t j = 0; j < v; ++j) {
        const double p = std::exp(d[i * v + j] - rows.lse[i]);
        d[i * v + j] = ignored ? 0.0 : scale * (p - (j == t ? 1.0 : 0.0));
      }
    }
    Tensor dz = Tensor::from_vector(d, {n, v}, x.dtype(), x.device());
    return {wants(0) ? matmul(dz, w) : Tensor(), wants(1) ? matmul(dz, x, true, false) : Tensor()};
  }
};

}  // namespace

Tensor vocab_parallel_embedding(const Tensor& weight, const Tensor& ids, Communicator& tp) {
  const int64_t v = weight.size(0), start = tp.rank() * v;
  std::vector<int64_t> local = ids.to_ints();
  std::vector<double> mask(local.size());
  for (size_t i = 0; i < local.size(); ++i) {
    const bool mine = local[i] >= start && local[i] < start + v;
    mask[i] = mine ? 1.0 : 0.0;
    local[i] = mine ? local[i] - start : 0;
  }
  Shape mshape = ids.shape();
  mshape.push_back(1);
  Tensor out = embedding(weight, Tensor::from_ints(local, ids.shape(), ids.dtype(), ids.device()));
  out = mul(out, Tensor::from_vector(mask, mshape, weight.dtype(), weight.device()));
  return reduce_from_tp(out, tp);
}

Tensor vocab_parallel_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets,
                                    Communicator& tp, int64_t ignore_index) {
  KILN_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1))
      << kCe << ": x (N, C) and weight (V/tp, C) expected, got " << x.str() << " and "
      << weight.str();
  KILN_CHECK(targets.dim() == 1 && targets.size(0) == x.size(0))
      << kCe << ": targets (N) expected for x " << x.str() << ", got " << targets.str();
  const int64_t start = tp.rank() * weight.size(0), v_total = tp.size() * weight.size(0);
  CeRows rows;
  {
    NoGradGuard ng;
    rows = ce_forward(x, weight, targets, tp, ignore_index, start, v_total);
  }
  const DType out_dtype = x.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  Tensor loss = Tensor::full({}, rows.loss, out_dtype, x.device());
  if (auto n = record<VocabParallelCeNode>({&x, &weight})) {
    n->rows = std::move(rows);
    n->start = start;
    n->ignore = ignore_index;
    n->saved = {x.detach(), weight.detach()};
    set_history(loss, n);
  }
  return loss;
}

}  // namespace kiln::parallel::tp
