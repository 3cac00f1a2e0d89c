// PrecastScope: the per-step cast of the fp32 parameters to the 16-bit compute dtype done once, in
// one batched launch (kiln::cuda::multi_cast), instead of one convert kernel per use. While a scope
// is open on this thread, nn::to_compute returns the precomputed copy of a listed parameter through
// cast_precomputed (core/ops/view.h): the same values and the same gradient as cast. The trainer
// opens one around each step's forward and backward (the parameters do not change inside it).
//
// PrecastCache (KILN_FUSED_PARAM_CAST): the copies kept across steps, so that the optimizer
// step, which reads and writes every parameter anyway, also writes their 16-bit copies (AdamW's
// kernel, optim::Optimizer::set_param_copies) and the next step's scope need not cast at all.
//
// KILN_OVERLAP_OPTIM (default on): that step runs on a side stream, group by group in the forward's
// order, and the next step's forward waits only for the group of the parameter it is about to
// use: the cache holds the groups, one event per group and the host-side bookkeeping of which
// ones the compute stream has waited for (see PrecastCache::begin_side_step).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace kiln::nn {

// Whether KILN_FUSED_PARAM_CAST is on (default on since 2026-12-06; 0 turns it off), and
// the tests' override: 1 on, 0 off, -1 the environment's.
bool fused_param_cast_enabled();
void set_fused_param_cast_override(int on);

// Whether KILN_OVERLAP_OPTIM is on (default on since 2026-12-06; 0 turns it off), and the tests'
// override as above.
bool overlap_optim_enabled();
void set_overlap_optim_override(int on);

// Cuts items of the given sizes, in their order, into at most max_groups contiguous groups of
// roughly equal total: a group closes once it holds at least ceil(total / max_groups), and an
// item of size 0 joins the group open at the time. Returns each item's group (0, 1, ...,
// nondecreasing). REQUIRES max_groups >= 1.
std::vector<int> contiguous_groups(const std::vector<int64_t>& sizes, int max_groups);

// KILN_OVERLAP_OPTIM's counts so far (every cache, every thread), for tests.
struct OverlapCounts {
  int64_t side_steps = 0;   // optimizer steps that ran on the side stream (every group ended)
  int64_t group_waits = 0;  // compute-stream waits for one group's event (a scope's first use)
  int64_t joins = 0;        // joins that found a step pending (a wait for its last event)
  int groups = 0;           // the groups of the cache built last
};
OverlapCounts overlap_counts();
// Tests: a spin of `us` microseconds on the side stream before each group's launches, so that a
// read that does not wait for its group sees the old values (0: none).
void set_overlap_test_delay_us(int64_t us);

// 16-bit copies of the fp32 CUDA parameters (the ones PrecastScope would cast) in one persistent
// buffer, and whether they are current, i.e. equal to the parameters rounded to the dtype now.
// Only the owner can know: it marks them current after an optimizer step that wrote every copy,
// and a PrecastScope over the cache marks them stale when it closes (they are used once), so
// anything that changes a parameter outside such a step (a checkpoint restore, a step that did not
// write them all) leaves the next scope to cast them afresh.
class PrecastCache {
 public:
  // REQUIRES: dtype is bf16 or f16. Selects parameters as PrecastScope does; on the CPU (or
  // without CUDA) the cache is empty.
  PrecastCache(const std::vector<Tensor>& params, DType dtype);
  PrecastCache(const PrecastCache&) = delete;
  PrecastCache& operator=(const PrecastCache&) = delete;

  DType dtype() const { return dtype_; }
  int64_t size() const { return static_cast<int64_t>(params_.size()); }
  // p's copy (p's shape), or an undefined tensor when p is not cached.
  Tensor copy_of(const Tensor& p) const;
  bool current() const { return current_; }
  void set_current(bool c) { current_ = c; }
  // Casts every cached parameter into its copy (one multi_cast); counts as a PrecastScope cast.
  void refresh();
  ~PrecastCache();  // joins a pending step first (its memory may be reused on the compute stream)

  // KILN_OVERLAP_OPTIM. The cached parameters are cut into contiguous groups in their order (the
  // model's registration order, which is the order of first use in its forward: embeddings,
  // blocks, final norm, head) of roughly equal size, at most kMaxGroups. group_of(p): p's group,
  // -1 when p is not cached.
  static constexpr int kMaxGroups = 16;
  int groups() const { return groups_; }
  int group_of(const Tensor& p) const;
  // The side stream (a cudaStream_t) of the parameters' device; null without CUDA or parameters.
  void* side_stream() const;
  // The protocol of one overlapped optimizer step: begin_side_step() makes the side stream wait
  // for the compute stream's work so far (the gradients final, scaled as the step needs) and first
  // joins a step still pending; then, for g = 0 .. groups() - 1 in order, the caller launches
  // group g's update on side_stream() and calls end_group(g), which records g's event there. After
  // the last group the step is pending: a scope's lookup (or to_compute) of a cached parameter
  // makes the compute stream wait for its group's event the first time the group is used (a
  // group's event covers the ones before it: the side stream runs them in order), and join()
  // waits for the last one. Nothing else orders the compute stream after the side stream.
  void begin_side_step();
  void end_group(int g);
  bool pending() const { return pending_; }
  // The compute stream waits for the pending step's last event; a no-op when none is pending. Call
  // it before anything but a scope's lookups reads or writes parameters, moments or gradients.
  void join();

 private:
  friend class PrecastScope;
  void await(const TensorImpl* p);  // p's group's event, unless an earlier wait covers it
  DType dtype_;
  Tensor flat_;                 // every copy, each starting at a multiple of 8 elements
  std::vector<Tensor> params_;  // the cached parameters (kept, so no key's impl is reused)
  std::vector<Tensor> copies_;  // their copies, in the same order
  std::unordered_map<const TensorImpl*, Tensor> map_;  // parameter -> its copy
  bool current_ = false;
  std::unordered_map<const TensorImpl*, int> group_;  // parameter -> its group
  int groups_ = 0;
  int device_ = -1;
  std::vector<void*> events_;  // one cudaEvent_t per group, made by the first begin_side_step
  bool pending_ = false;
  int waited_ = -1;  // the last group of the pending step the compute stream waits for
};

class PrecastScope {
 public:
  // Casts every fp32 CUDA parameter of `params` to `dtype` (bf16 or f16) into one buffer; other
  // parameters, or any on the CPU, are left to to_compute's ordinary cast.
  PrecastScope(const std::vector<Tensor>& params, DType dtype);
  // The cache's copies: cast first (refresh) unless they are current; marked stale on close.
  explicit PrecastScope(PrecastCache& cache);
  ~PrecastScope();
  PrecastScope(const PrecastScope&) = delete;
  PrecastScope& operator=(const PrecastScope&) = delete;

  // The innermost open scope's copy of x in dtype, or an undefined tensor when there is none.
  // Waits as await(x) does first.
  static Tensor lookup(const Tensor& x, DType dtype);
  // KILN_OVERLAP_OPTIM: when the innermost scope is over a cache with a step pending and x is one
  // of its parameters, the compute stream waits for x's group (PrecastCache::end_group). nn::
  // to_compute calls it for a parameter it returns as it is; a no-op otherwise.
  static void await(const Tensor& x);
  int64_t size() const { return static_cast<int64_t>(copies().size()); }
  // Batched casts run so far by scopes and caches (all threads): the fused path's tests count them.
  static int64_t casts();

 private:
  const std::unordered_map<const TensorImpl*, Tensor>& copies() const {
    return cache_ != nullptr ? cache_->map_ : copies_;
  }
  DType dtype_;
  PrecastCache* cache_ = nullptr;  // the cache's copies, else this scope's own
  Tensor flat_;                    // (total) every copy, each starting at a multiple of 8 elements
  std::unordered_map<const TensorImpl*, Tensor> copies_;  // parameter -> its copy (its shape)
  std::vector<Tensor> keep_;  // the parameters, so no key's impl is freed and reused meanwhile
  PrecastScope* prev_ = nullptr;
};

}  // namespace kiln::nn
