// Small helpers shared by the CPU reference ops in this folder (reduce, layernorm, rmsnorm,
// activation, softmax, embedding): argument checks that name the op and the argument, and the
// (outer, n, inner) split of a shape around one dim that reductions and softmax iterate over.
#pragma once

#include <cstdint>

#include "core/check.h"
#include "core/tensor.h"

namespace kiln::ops {

// t is defined and has a dtype the CPU kernels compute with (f32, f64, bf16, f16).
inline void check_float_arg(const char* op, const char* arg, const Tensor& t) {
  KILN_CHECK(t.defined()) << op << ": " << arg << " is an undefined tensor";
  const DType d = t.dtype();
  KILN_CHECK(d == DType::kF32 || d == DType::kF64 || d == DType::kBF16 || d == DType::kF16)
      << op << ": " << arg << " must be a floating tensor (f32, f64, bf16, f16), got " << t.str();
}

// t (named arg) has the dtype and device of ref (named ref_arg).
inline void check_like(const char* op, const char* arg, const Tensor& t, const char* ref_arg,
                       const Tensor& ref) {
  KILN_CHECK(t.dtype() == ref.dtype()) << op << ": dtype mismatch, " << arg << " is " << t.str()
                                       << " but " << ref_arg << " is " << ref.str();
  KILN_CHECK(t.device() == ref.device()) << op << ": device mismatch, " << arg << " is " << t.str()
                                         << " but " << ref_arg << " is " << ref.str();
}

// The CPU reference kernels only; a CUDA backend dispatches before reaching them.
inline void check_cpu(const char* op, const char* arg, const Tensor& t) {
  KILN_CHECK(t.device().is_cpu()) << op << ": " << arg << " is on " << t.device()
                                  << "; only CPU tensors are supported for now (got " << t.str()
                                  << ")";
}

// A contiguous shape seen as (outer, n, inner) around dim d: element (o, k, i) sits at
// (o * n + k) * inner + i.
struct DimSplit {
  int64_t outer = 1, n = 1, inner = 1;
};
inline DimSplit split_at(const Shape& s, int64_t d) {
  DimSplit r;
  const int64_t nd = static_cast<int64_t>(s.size());
  if (nd == 0) return r;
  for (int64_t i = 0; i < d; ++i) r.outer *= s[i];
  r.n = s[d];
  for (int64_t i = d + 1; i < nd; ++i) r.inner *= s[i];
  return r;
}

}  // namespace kiln::ops
