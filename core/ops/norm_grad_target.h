// Where a norm's weight / bias gradient goes on CUDA (layer_norm, rms_norm and their fused
// residual variants): straight into the parameter's f32 .grad when autograd offers it
// (accumulation_target: a 16-bit weight used through its cast of an f32 master, or an f32 weight),
// written by the kernel that adds the per-chunk partials (over a stale .grad, else added), instead
// of a new 16-bit tensor that autograd then converts or adds into the .grad: one kernel launch per
// parameter a step less. KILN_NORM_DIRECT_GRAD=0 turns it off.
#pragma once

#include "core/autograd.h"
#include "core/env_switch.h"
#include "core/tensor.h"

namespace kiln::ops {

inline EnvSwitch g_norm_direct_grad("KILN_NORM_DIRECT_GRAD", /*default_on=*/true);

// The f32 .grad for parameter p (reached through input edge e) that the CUDA backward writes its
// gradient into, claimed, or undefined (then the backward returns a new tensor as usual). *over:
// the .grad was stale and must be written over. Only on CUDA, for a 16-bit or f32 x.
inline Tensor norm_grad_target(const Edge& e, bool wanted, const Tensor& p, const Tensor& x,
                               bool* over) {
  *over = false;
  if (!wanted || !e.fn || !g_norm_direct_grad.on() || !x.device().is_cuda() ||
      x.dtype() == DType::kF64)
    return Tensor();
  return accumulation_target(e, p.shape(), p.device(), over);
}

// The gradient to return for a parameter whose target was t: the marker when t took it.
inline Tensor param_grad_or_marker(const Tensor& t, const Tensor& g) {
  return t.defined() ? accumulated_marker() : g;
}

}  // namespace kiln::ops
