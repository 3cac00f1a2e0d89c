// PrecastScope: one batched fp32 -> 16-bit cast of the parameters per step (see precast.h).
#include "core/nn/precast.h"

#include "core/check.h"
#include "core/ops/cuda_base_ops.h"

namespace kiln::nn {
namespace {

thread_local PrecastScope* t_scope = nullptr;

}  // namespace

PrecastScope::PrecastScope(const std::vector<Tensor>& params, DType dtype)
    : dtype_(dtype), prev_(t_scope) {
  t_scope = this;
  KILN_CHECK(dtype == DType::kBF16 || dtype == DType::kF16) << "PrecastScope: to " << dtype;
#if KILN_WITH_CUDA
  std::vector<Tensor> src;
  std::vector<int64_t> offset;
  int64_t total = 0;
  for (const Tensor& p : params) {
    if (!p.defined() || p.dtype() != DType::kF32 || !p.is_contiguous() || !ops::run_on_cuda(p) ||
        p.numel() == 0 || copies_.count(p.impl()) > 0)
      continue;
    if (!src.empty() && p.device() != src[0].device()) continue;
    src.push_back(p);
    offset.push_back(total);
    total += (p.numel() + 7) / 8 * 8;
    copies_[p.impl()] = Tensor();
  }
  if (src.empty()) return;
  flat_ = Tensor::empty({total}, dtype, src[0].device());
  std::vector<Tensor> dst;
  for (size_t i = 0; i < src.size(); ++i) {
    Tensor d = flat_.narrow(0, offset[i], src[i].numel()).reshape(src[i].shape());
    copies_[src[i].impl()] = d;
    dst.push_back(d);
  }
  cuda::multi_cast(src, dst);
  keep_ = std::move(src);
#else
  (void)params;
#endif
}

PrecastScope::~PrecastScope() { t_scope = prev_; }

Tensor PrecastScope::lookup(const Tensor& x, DType dtype) {
  if (t_scope == nullptr || t_scope->dtype_ != dtype || !x.defined()) return Tensor();
  auto it = t_scope->copies_.find(x.impl());
  return it == t_scope->copies_.end() ? Tensor() : it->second;
}

}  // namespace kiln::nn
