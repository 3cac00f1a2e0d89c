// PrecastScope: the per-step cast of the fp32 parameters to the 16-bit compute dtype done once, in
// one batched launch (kiln::cuda::multi_cast), instead of one convert kernel per use. While a scope
// is open on this thread, nn::to_compute returns the precomputed copy of a listed parameter through
// cast_precomputed (core/ops/view.h): the same values and the same gradient as cast. The trainer
// opens one around each step's forward and backward (the parameters do not change inside it).
#pragma once

#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace kiln::nn {

class PrecastScope {
 public:
  // Casts every fp32 CUDA parameter of `params` to `dtype` (bf16 or f16) into one buffer; other
  // parameters, or any on the CPU, are left to to_compute's ordinary cast.
  PrecastScope(const std::vector<Tensor>& params, DType dtype);
  ~PrecastScope();
  PrecastScope(const PrecastScope&) = delete;
  PrecastScope& operator=(const PrecastScope&) = delete;

  // The innermost open scope's copy of x in dtype, or an undefined tensor when there is none.
  static Tensor lookup(const Tensor& x, DType dtype);
  int64_t size() const { return static_cast<int64_t>(copies_.size()); }

 private:
  DType dtype_;
  Tensor flat_;  // (total) every copy, each starting at a multiple of 8 elements
  std::unordered_map<const TensorImpl*, Tensor> copies_;  // parameter -> its copy (its shape)
  std::vector<Tensor> keep_;  // the parameters, so no key's impl is freed and reused meanwhile
  PrecastScope* prev_ = nullptr;
};

}  // namespace kiln::nn
