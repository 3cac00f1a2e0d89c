// PrecastScope: one batched fp32 -> 16-bit cast of the parameters per step, and PrecastCache, the
// copies kept across steps for the optimizer to write (see precast.h).
#include "core/nn/precast.h"

#include <algorithm>
#include <atomic>

#include "core/check.h"
#include "core/env_switch.h"
#include "core/ops/cuda_base_ops.h"
#if KILN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif

namespace kiln::nn {
namespace {

thread_local PrecastScope* t_scope = nullptr;
std::atomic<int64_t> g_casts{0};
EnvSwitch g_fused("KILN_FUSED_PARAM_CAST", /*default_on=*/true);
EnvSwitch g_overlap("KILN_OVERLAP_OPTIM", /*default_on=*/true);
std::atomic<int64_t> g_side_steps{0}, g_group_waits{0}, g_joins{0}, g_delay_us{0};
std::atomic<int> g_groups{0};

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
bool overlap_optim_enabled() { return g_overlap.on(); }
void set_overlap_optim_override(int on) { g_overlap.force(on); }

std::vector<int> contiguous_groups(const std::vector<int64_t>& sizes, int max_groups) {
  KILN_CHECK_GE(max_groups, 1);
  int64_t total = 0;
  for (int64_t n : sizes) total += std::max<int64_t>(n, 0);
  const int64_t target = std::max<int64_t>(1, (total + max_groups - 1) / max_groups);
  std::vector<int> out;
  int g = 0;
  int64_t held = 0;  // in group g so far
  for (int64_t n : sizes) {
    // Each closed group holds >= target, so at most max_groups close before the total is spent.
    if (held >= target && n > 0) {
      ++g;
      held = 0;
    }
    out.push_back(g);
    held += std::max<int64_t>(n, 0);
  }
  return out;
}

OverlapCounts overlap_counts() {
  return {g_side_steps.load(), g_group_waits.load(), g_joins.load(), g_groups.load()};
}
void set_overlap_test_delay_us(int64_t us) { g_delay_us.store(us); }

PrecastCache::PrecastCache(const std::vector<Tensor>& params, DType dtype) : dtype_(dtype) {
  Copies c = make_copies(params, dtype);
  params_ = std::move(c.src);
  copies_ = std::move(c.dst);
  flat_ = std::move(c.flat);
  for (size_t i = 0; i < params_.size(); ++i) map_[params_[i].impl()] = copies_[i];
  std::vector<int64_t> sizes;
  for (const Tensor& p : params_) sizes.push_back(p.numel());
  const std::vector<int> g = contiguous_groups(sizes, kMaxGroups);
  for (size_t i = 0; i < params_.size(); ++i) group_[params_[i].impl()] = g[i];
  groups_ = g.empty() ? 0 : g.back() + 1;
  if (!params_.empty()) device_ = params_[0].device().index;
  g_groups.store(groups_);
}

PrecastCache::~PrecastCache() {
  join();
#if KILN_WITH_CUDA
  for (void* e : events_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(e));
#endif
}

int PrecastCache::group_of(const Tensor& p) const {
  if (!p.defined()) return -1;
  auto it = group_.find(p.impl());
  return it == group_.end() ? -1 : it->second;
}

void* PrecastCache::side_stream() const {
#if KILN_WITH_CUDA
  if (device_ >= 0) return cuda::side_stream(device_);
#endif
  return nullptr;
}

void PrecastCache::begin_side_step() {
  KILN_CHECK(groups_ > 0) << "PrecastCache: no parameters to step on the side stream";
  join();
#if KILN_WITH_CUDA
  cuda::DeviceGuard guard(device_);
  if (events_.empty()) {
    for (int g = 0; g < groups_; ++g) {
      cudaEvent_t e = nullptr;
      KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      events_.push_back(e);
    }
  }
  const cudaStream_t side = cuda::side_stream(device_);
  cuda::stream_wait_compute(side);
  cuda::delay_stream(side, g_delay_us.load());
#endif
}

void PrecastCache::end_group(int g) {
  KILN_CHECK(g >= 0 && g < groups_ && !events_.empty()) << "PrecastCache: end_group(" << g << ")";
#if KILN_WITH_CUDA
  cuda::DeviceGuard guard(device_);
  const cudaStream_t side = cuda::side_stream(device_);
  KILN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[g]), side));
  if (g + 1 < groups_) cuda::delay_stream(side, g_delay_us.load());
#endif
  if (g + 1 == groups_) {
    pending_ = true;
    waited_ = -1;
    ++g_side_steps;
  }
}

void PrecastCache::await(const TensorImpl* p) {
  if (!pending_) return;
  auto it = group_.find(p);
  if (it == group_.end() || it->second <= waited_) return;
#if KILN_WITH_CUDA
  cuda::DeviceGuard guard(device_);
  KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(device_),
                                      static_cast<cudaEvent_t>(events_[it->second]), 0));
#endif
  ++g_group_waits;
  waited_ = it->second;
  if (waited_ + 1 == groups_) pending_ = false;  // the last group's event covers them all
}

void PrecastCache::join() {
  if (!pending_) return;
#if KILN_WITH_CUDA
  cuda::DeviceGuard guard(device_);
  KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(device_),
                                      static_cast<cudaEvent_t>(events_[groups_ - 1]), 0));
#endif
  ++g_joins;
  pending_ = false;
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
  if (!cache.current()) {
    cache.join();  // the cast reads the fp32 parameters
    cache.refresh();
  }
}

PrecastScope::~PrecastScope() {
  t_scope = prev_;
  if (cache_ != nullptr) cache_->set_current(false);  // used once: only a full write renews them
}

void PrecastScope::await(const Tensor& x) {
  if (t_scope != nullptr && t_scope->cache_ != nullptr && t_scope->cache_->pending_ && x.defined())
    t_scope->cache_->await(x.impl());
}

Tensor PrecastScope::lookup(const Tensor& x, DType dtype) {
  await(x);
  if (t_scope == nullptr || t_scope->dtype_ != dtype || !x.defined()) return Tensor();
  const auto& copies = t_scope->copies();
  auto it = copies.find(x.impl());
  return it == copies.end() ? Tensor() : it->second;
}

int64_t PrecastScope::casts() { return g_casts.load(); }

}  // namespace kiln::nn
