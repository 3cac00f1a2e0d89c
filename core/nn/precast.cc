// PrecastScope: one batched fp32 -> 16-bit cast of the parameters per step, and PrecastCache, the
// copies kept across steps for the optimizer to write (see precast.h).
#include "core/nn/precast.h"

#include <atomic>

#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/cuda_base_ops.h"

namespace kiln::nn {
namespace {

thread_local PrecastScope* t_scope = nullptr;
std::atomic<int64_t> g_casts{0};
EnvSwitch g_fused("KILN_FUSED_PARAM_CAST", /*default_on=*/true);

// The parameters to cast (contiguous fp32 CUDA, non-empty, each once, all on the first one's
// device), their copies' views of one new flat buffer of dtype (each at a multiple of 8 elements,
// the parameter's shape), and the buffer. Nothing without CUDA.
struct Copies {
  std::vector<Tensor> src, dst;
  Tensor flat;
};

Copies make_copies(const std::vector<Tensor>& params, DType dtype) {
  KILN_CHECK(dtype == DType::kBF16 || dtype == DType::kF16) << "PrecastScope: to " << dtype;
  Copies c;
#if KILN_WITH_CUDA
  std::unordered_map<const TensorImpl*, int> seen;
  std::vector<int64_t> offset;
  int64_t total = 0;
  for (const Tensor& p : params) {
    if (!p.defined() || p.dtype() != DType::kF32 || !p.is_contiguous() || !ops::run_on_cuda(p) ||
        p.numel() == 0 || seen.count(p.impl()) > 0)
      continue;
    if (!c.src.empty() && p.device() != c.src[0].device()) continue;
    seen[p.impl()] = 1;
    c.src.push_back(p);
    offset.push_back(total);
    total += (p.numel() + 7) / 8 * 8;
  }
  if (c.src.empty()) return c;
  c.flat = Tensor::empty({total}, dtype, c.src[0].device());
  for (size_t i = 0; i < c.src.size(); ++i)
    c.dst.push_back(c.flat.narrow(0, offset[i], c.src[i].numel()).reshape(c.src[i].shape()));
#else
  (void)params;
#endif
  return c;
}

void cast_all(const std::vector<Tensor>& src, const std::vector<Tensor>& dst) {
  if (src.empty()) return;
#if KILN_WITH_CUDA
  cuda::multi_cast(src, dst);
  ++g_casts;
#else
  (void)dst;
#endif
}

}  // namespace

bool fused_param_cast_enabled() { return g_fused.on(); }
void set_fused_param_cast_override(int on) { g_fused.force(on); }

PrecastCache::PrecastCache(const std::vector<Tensor>& params, DType dtype) : dtype_(dtype) {
  Copies c = make_copies(params, dtype);
  params_ = std::move(c.src);
  copies_ = std::move(c.dst);
  flat_ = std::move(c.flat);
  for (size_t i = 0; i < params_.size(); ++i) map_[params_[i].impl()] = copies_[i];
}

Tensor PrecastCache::copy_of(const Tensor& p) const {
  if (!p.defined()) return Tensor();
  auto it = map_.find(p.impl());
  return it == map_.end() ? Tensor() : it->second;
}

void PrecastCache::refresh() { cast_all(params_, copies_); }

PrecastScope::PrecastScope(const std::vector<Tensor>& params, DType dtype)
    : dtype_(dtype), prev_(t_scope) {
  t_scope = this;
  Copies c = make_copies(params, dtype);
  for (size_t i = 0; i < c.src.size(); ++i) copies_[c.src[i].impl()] = c.dst[i];
  cast_all(c.src, c.dst);
  flat_ = std::move(c.flat);
  keep_ = std::move(c.src);
}

PrecastScope::PrecastScope(PrecastCache& cache)
    : dtype_(cache.dtype()), cache_(&cache), prev_(t_scope) {
  t_scope = this;
  if (!cache.current()) cache.refresh();
}

PrecastScope::~PrecastScope() {
  t_scope = prev_;
  if (cache_ != nullptr) cache_->set_current(false);  // used once: only a full write renews them
}

Tensor PrecastScope::lookup(const Tensor& x, DType dtype) {
  if (t_scope == nullptr || t_scope->dtype_ != dtype || !x.defined()) return Tensor();
  const auto& copies = t_scope->copies();
  auto it = copies.find(x.impl());
  return it == copies.end() ? Tensor() : it->second;
}

int64_t PrecastScope::casts() { return g_casts.load(); }

}  // namespace kiln::nn
