// Device dispatch for ops that have both a CPU reference kernel and a CUDA kernel: decides which
// one runs, and turns a CUDA tensor that cannot run (kiln built without CUDA, or no GPU visible)
// into a clear kiln::Error naming the op and the argument instead of a crash.
#pragma once

#include "core/backend.h"
#include "core/check.h"
#include "core/tensor.h"

namespace kiln::ops {

// True when t is a CUDA tensor and the CUDA kernels can run; false for a CPU tensor. Throws for a
// CUDA tensor when the CUDA backend is absent. Arguments are expected to share t's device (checked
// by the op beforehand).
inline bool on_cuda(const char* op, const char* arg, const Tensor& t) {
  if (!t.device().is_cuda()) return false;
#if KILN_WITH_CUDA
  KILN_CHECK(cuda_available()) << op << ": " << arg << " is on " << t.device()
                               << " but no CUDA device is available to this process (got "
                               << t.str() << ")";
  return true;
#else
  KILN_CHECK(false) << op << ": " << arg << " is on " << t.device()
                    << " but kiln was built without CUDA (got " << t.str() << ")";
  return false;
#endif
}

}  // namespace kiln::ops
