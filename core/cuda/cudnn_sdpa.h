// Causal scaled dot-product attention through cuDNN 9's fused flash-attention engines, built with
// the cuDNN backend graph API (no cudnn_frontend): the operation graph for the forward (QK^T,
// scale, causal mask, softmax with log-sum-exp stats, PV) and the backward (dQ, dK, dV from the
// stats), engine heuristics, execution plans cached per shape, workspace from kiln's CUDA
// allocator. Only bf16 and f16 are served; callers fall back to the kiln kernel
// (core/ops/attention.cu) when a call here returns a non-OK status. Only compiled with CUDA.
#pragma once

#include "absl/status/status.h"
#include "core/tensor.h"

namespace kiln::cuda {

// Whether cuDNN (9.0 or later) is linked and loads. Cheap after the first call.
bool cudnn_sdpa_available();

// out = softmax(scale q k^T + causal mask) v; lse = the natural log-sum-exp of each scaled score
// row (max + log sum exp), as the CPU kernel saves it.
//   q: (B, Hq, T, D); k, v: (B, Hkv, T, D), Hq % Hkv == 0; any strides with stride 1 in D.
//   out: (B, Hq, T, D), q's dtype, any strides with stride 1 in D (e.g. laid out (B, T, H, D));
//   lse: (B, Hq, T) f32 contiguous. Both written.
// Returns an error (nothing launched) when cuDNN cannot serve this dtype/shape: no cuDNN, f32,
// no engine for the graph, or plan finalisation failing. A failure is remembered per shape.
// REQUIRES: all tensors on the current CUDA device; one floating dtype for q, k, v, out.
absl::Status sdpa_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                          const Tensor& out, const Tensor& lse);

// Gradients of sdpa_forward. dq (B, Hq, T, D), dk and dv (B, Hkv, T, D): q's dtype, any strides
// with stride 1 in D (e.g. the thirds of one packed (B, T, 3, H, D) buffer), written (dk, dv summed
// over the query heads of each group). out and dout: (B, Hq, T, D) with stride 1 in D; lse as
// sdpa_forward wrote it. deterministic picks the graph whose dQ is one matmul (no atomic fp32
// accumulation) and engines without the non-deterministic note.
absl::Status sdpa_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                           const Tensor& dout, const Tensor& lse, double scale, bool deterministic,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv);

// Number of execution plans built so far (cached forward + backward), for tests and benchmarks.
int64_t sdpa_plans_built();

// Tuning (on by default, KILN_SDPA_TUNE=0 turns it off; never in deterministic mode): a graph
// built from then on keeps up to 16 plans, the heuristics' configs and, for the first config's
// engine, one knob changed at a time; its first call times each (one warm-up and 3 runs on the
// call's own tensors, outputs rewritten by the real call after) and keeps the fastest.
void force_sdpa_tune(int on);  // tests: 1 on, 0 off, -1 back to the environment

// What the last tuned forward (backward = false) or backward plan found.
struct SdpaTuneResult {
  int candidates = 0;  // plans that finalised
  int picked = -1;     // the fastest (0 is the heuristics' first choice)
  float first_ms = 0;  // candidate 0, per run
  float best_ms = 0;   // the pick, per run
};
SdpaTuneResult last_sdpa_tune(bool backward);

// Tests: every later call of a tuned plan runs candidate i % candidates instead of the pick
// (-1: the pick again), so each candidate's results can be checked; last_sdpa_candidate says
// which one the last forward / backward call ran.
void force_sdpa_candidate(int i);
int last_sdpa_candidate(bool backward);

}  // namespace kiln::cuda
