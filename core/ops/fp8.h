// fp8 training GEMMs with per-tensor "current scaling": each operand's amax = max |x| is reduced
// on the device, its scale s = fp8_max / amax (1 where amax == 0) and descale 1 / s stay in device
// memory (no host sync), and q = saturate(x * s) is stored in fp8. fp8_linear is the differentiable
// linear layer built on it: e4m3 activations and weights forward, e5m2 output gradients backward,
// every GEMM through cuBLASLt's fp8 kernels (operands contiguous along K, the "TN" layout) with the
// descales multiplied in. fp8_mlp_gelu is GPT-2's MLP (linear, GELU, linear) as one such op.
// CUDA only, compute capability 8.9+ (Ada / Hopper).
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace kiln {

// Largest finite magnitudes of the fp8 formats: e4m3 448, e5m2 57344.
double fp8_max(DType fp8_dtype);

// A per-tensor-scaled fp8 copy of a matrix x (R, C).
struct Fp8Tensor {
  Tensor data;    // (R, C) fp8: q = saturate(x * scale), or undefined when not asked for
  Tensor data_t;  // (C, R) fp8: q transposed (contiguous), or undefined when not asked for
  // (3) f32 on x's device: {amax, scale, descale}; descale 16-byte aligned, so that cuBLASLt
  // reads it in place (fp8_quantize places meta 8 bytes into an aligned allocation).
  Tensor meta;
  // 0-dim f32 views into meta.
  Tensor amax() const;
  Tensor scale() const;
  Tensor descale() const;
};

// max |x| over all elements as a 0-dim f32 tensor on x's device; a NaN element makes it NaN.
// x: any shape, bf16 / f16 / f32 on CUDA. No host sync.
Tensor fp8_amax(const Tensor& x);

// Quantizes x (..., C), viewed as (R, C) with R the product of the leading dims, to fp8_dtype
// (kF8E4M3 or kF8E5M2) with the current-scaling recipe above: scale = fp8_max / amax, amax == 0 ->
// 1, an amax so small that the scale overflows -> FLT_MAX; q = round-to-nearest-even, saturating
// (the same bits as f32_to_fp8 of the f32 product x * scale). Writes q when `rowwise`, its
// transpose when `transposed` (one pass over x for both). With `colsum` (transposed must be set),
// *colsum = the column sums of x (C) in x's dtype, from the same pass: f32 partials over chunks
// of rows added in a fixed order (core/ops/fp8_colsum.h), rounded once; deterministic. No
// autograd. x: bf16 / f16 / f32, CUDA.
Fp8Tensor fp8_quantize(const Tensor& x, DType fp8_dtype, bool rowwise = true,
                       bool transposed = false, Tensor* colsum = nullptr);

// Delayed scaling (on by default since 2026-12-06, when it made fp8 2.4% faster than bf16 at GPT-2
// 1.5B on an H100; KILN_FP8_DELAYED_SCALING=0 turns it off, read once): a tensor
// role (a linear's input, weight or output gradient) scales each use by the amax of its previous
// use and reduces its own amax in the same pass as the cast (Transformer Engine's delayed scaling
// with a history of one), which saves current scaling's separate amax read of the tensor. A value
// above the previous amax saturates to fp8's largest finite value. The first use scales by its
// own amax. Checkpoints keep every rank's histories (core/nn/fp8_histories.h), and a resume in the
// same layout restores them, so it scales as the uninterrupted run would have (bit-identical in
// deterministic mode); a resume into another layout starts them afresh. Inside an activation
// recompute region the first forward logs each amax it scaled by and the recomputation scales by
// those and leaves the histories alone (core/recompute.h RecomputeLog), so recompute keeps the
// gradients bit-identical.
struct Fp8History {
  Tensor slots;      // (3) f32 on the device: the amaxes of the last uses (a ring, core/ops/fp8.cu)
  int64_t uses = 0;  // quantizations so far
};
// The histories of one linear layer: its input, its weight and its output's gradient.
struct Fp8LinearScaling {
  Fp8History x, w, gy;
};
bool fp8_delayed_scaling();
// Tests: forces the choice above (1 on, 0 off); -1 restores it.
void set_fp8_delayed_scaling_override(int on);

// fp8_quantize with delayed scaling through *h (allocated on x's device on first use; a history
// moved to another device starts afresh). Meta holds {the amax scaled by, scale, descale}.
Fp8Tensor fp8_quantize_delayed(const Tensor& x, DType fp8_dtype, Fp8History* h, bool rowwise = true,
                               bool transposed = false);

// True when fp8_linear can run x: (..., K) against w: (N, K): x on CUDA, x and w bf16, and K, N and
// the row count (the product of x's leading dims) positive multiples of 16 (what cuBLASLt's fp8
// kernels need of every GEMM of the forward and the backward). Does not look at the GPU model.
bool fp8_linear_applies(const Tensor& x, const Tensor& w);

// y = x w^T + b with fp8 GEMMs, differentiable. x: (..., K) bf16 CUDA, w: (N, K) bf16, b: (N) bf16
// or undefined. Result (..., N) bf16. Forward: x and w quantized to e4m3 (current scaling), the
// bias added in the GEMM epilogue, fp32 accumulation. Backward with dY quantized to e5m2:
// dX = dY W (dY e5m2 against the e4m3 W^T saved from the forward), dW = dY^T X (dY^T e5m2 against
// the e4m3 X^T saved from the forward), db = the column sums of the bf16 dY (f64 accumulation;
// with fp8_fused_dbias(), from dY's transposing cast as fp8_quantize's colsum, when dW is needed).
// Saves only fp8 copies (X^T, W^T) and their descales for backward. REQUIRES:
// fp8_linear_applies(x, w); a GPU of compute capability 8.9+ (kiln::Error naming the op otherwise).
// Compare linear_fp8 (core/ops/matmul.h): a forward GEMM on operands already in fp8.
// With `scaling`, x, w and dY take delayed scaling through its histories (see above).
Tensor fp8_linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor(),
                  std::shared_ptr<Fp8LinearScaling> scaling = nullptr);

// Whether fp8_linear's forward GEMM uses cuBLASLt's fast accumulation (Transformer Engine's
// recipe: fast accumulation forward, the periodic promotion to fp32 for the gradients' GEMMs).
// On by default since 2026-12-06 (H100: GPT-2 1.5B fp8 +2.7%, benchmarks/RESULTS.md);
// KILN_FP8_FAST_ACCUM=0 (read once) turns it off.
bool fp8_fast_accum_forward();
// Tests: forces the choice above (1 on, 0 off); -1 restores it.
void set_fp8_fast_accum_override(int on);

// Switches, on by default since their GPU tests passed and they measured faster (2026-12-06,
// benchmarks/RESULTS.md; each read once, "0" = off):
// KILN_FP8_FUSED_DBIAS: the bias gradients of fp8_linear / fp8_mlp_gelu come from dY's
// transposing cast (Transformer Engine's cast_transpose_dbias) instead of a pass of their own.
bool fp8_fused_dbias();
// KILN_FP8_FUSED_MLP: models run GPT-2's MLP with fp8 on as fp8_mlp_gelu (models/transformer.cc).
bool fp8_fused_mlp();
// KILN_FP8_DIRECT_WGRAD (on by default, 2026-12-06; no accessor, the tests force it): fp8_linear's
// and fp8_mlp_gelu's weight gradients go from the fp8 GEMM (f32 output) straight into an f32
// parameter's .grad (autograd's accumulation_target: added with beta = 1, or written over a stale
// one with beta = 0), as the 16-bit linears' do, instead of a bf16 dW that autograd converts and
// adds.
//
// The weight GEMMs that went straight into a .grad so far (tests).
int64_t fp8_direct_wgrad_count();
// KILN_FP8_RESID_EPILOGUE (on by default, 2026-12-06): GPT-2's blocks pass the second residual to
// fp8_mlp_gelu, whose second GEMM adds it, instead of a separate add.
bool fp8_resid_epilogue();
// Tests: force a switch (1 on, 0 off); -1 restores the environment's choice.
void set_fp8_fused_dbias_override(int on);
void set_fp8_fused_mlp_override(int on);
void set_fp8_direct_wgrad_override(int on);
void set_fp8_resid_epilogue_override(int on);

// linear(gelu_tanh(linear(x, w1, b1)), w2, b2) with fp8 GEMMs, differentiable: GPT-2's MLP.
// x: (..., C) bf16 CUDA, w1: (H, C), b1: (H) or undefined, w2: (C2, H), b2: (C2) or undefined, all
// bf16. Result (..., C2) bf16. Forward: x, w1 in e4m3, one fp8 GEMM with bias + GELU in cuBLASLt's
// epilogue (GELU_AUX_BIAS: h and its bf16 input pre), h and w2 in e4m3 for the second GEMM (bias
// in its epilogue). Backward: dH from the e5m2 dY (as fp8_linear's dX), dH * gelu'(pre) in place
// with b1's gradient (kiln's dgelu_bgrad kernel), that in e5m2 for c_fc's dX and dW; b2's
// gradient as fp8_linear's db. Where cuBLASLt has no fp8 GELU epilogue the forward runs the fp8
// GEMM with the bias, then kiln's GELU (counted: fp8_mlp_unfused_gelu_count()). Saves fp8 copies,
// the bf16 pre and descales only (the composed fp8 path's memory). REQUIRES: fp8_linear's
// conditions for x against w1 and for the (..., H) hidden against w2. With fc / proj, the first /
// second linear's x, w and dY take delayed scaling through their histories.
// With `residual` (bf16, the result's shape): y + residual, the residual added by the second
// GEMM (C with beta = 1; where cuBLASLt offers no such algorithm, an add after), its gradient dY.
Tensor fp8_mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                    const Tensor& b2, std::shared_ptr<Fp8LinearScaling> fc = nullptr,
                    std::shared_ptr<Fp8LinearScaling> proj = nullptr,
                    const Tensor& residual = Tensor());
// Forwards of fp8_mlp_gelu that ran the GELU unfused (cuBLASLt offered no fp8 GELU epilogue).
int64_t fp8_mlp_unfused_gelu_count();

// Backward passes of fp8_linear that quantized dY to e4m3 because cuBLASLt offered no
// e5m2 x e4m3 kernel for the shape (0 where every backward ran in e5m2). Tests and logs.
int64_t fp8_e4m3_backward_count();

}  // namespace kiln
