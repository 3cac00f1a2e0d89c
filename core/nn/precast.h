// PrecastScope: the per-step cast of the fp32 parameters to the 16-bit compute dtype done once, in
// one batched launch (kiln::cuda::multi_cast), instead of one convert kernel per use. While a scope
// is open on this thread, nn::to_compute returns the precomputed copy of a listed parameter through
// cast_precomputed (core/ops/view.h): the same values and the same gradient as cast. The trainer
// opens one around each step's forward and backward (the parameters do not change inside it).
//
// PrecastCache (KILN_FUSED_PARAM_CAST): the copies kept across steps, so that the optimizer
// step, which reads and writes every parameter anyway, also writes their 16-bit copies (AdamW's
// kernel, optim::Optimizer::set_param_copies) and the next step's scope need not cast at all.
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

 private:
  friend class PrecastScope;
  DType dtype_;
  Tensor flat_;                 // every copy, each starting at a multiple of 8 elements
  std::vector<Tensor> params_;  // the cached parameters (kept, so no key's impl is reused)
  std::vector<Tensor> copies_;  // their copies, in the same order
  std::unordered_map<const TensorImpl*, Tensor> map_;  // parameter -> its copy
  bool current_ = false;
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
  static Tensor lookup(const Tensor& x, DType dtype);
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
