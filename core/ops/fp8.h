// fp8 training GEMMs with per-tensor "current scaling": each operand's amax = max |x| is reduced
// on the device, its scale s = fp8_max / amax (1 where amax == 0) and descale 1 / s stay in device
// memory (no host sync), and q = saturate(x * s) is stored in fp8. fp8_linear is the differentiable
// linear layer built on it: e4m3 activations and weights forward, e5m2 output gradients backward,
// every GEMM through cuBLASLt's fp8 kernels (operands contiguous along K, the "TN" layout) with the
// descales multiplied in. CUDA only, compute capability 8.9+ (Ada / Hopper).
#pragma once

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
// transpose when `transposed` (one pass over x for both). No autograd. x: bf16 / f16 / f32, CUDA.
Fp8Tensor fp8_quantize(const Tensor& x, DType fp8_dtype, bool rowwise = true,
                       bool transposed = false);

// True when fp8_linear can run x: (..., K) against w: (N, K): x on CUDA, x and w bf16, and K, N and
// the row count (the product of x's leading dims) positive multiples of 16 (what cuBLASLt's fp8
// kernels need of every GEMM of the forward and the backward). Does not look at the GPU model.
bool fp8_linear_applies(const Tensor& x, const Tensor& w);

// y = x w^T + b with fp8 GEMMs, differentiable. x: (..., K) bf16 CUDA, w: (N, K) bf16, b: (N) bf16
// or undefined. Result (..., N) bf16. Forward: x and w quantized to e4m3 (current scaling), the
// bias added in the GEMM epilogue, fp32 accumulation. Backward with dY quantized to e5m2:
// dX = dY W (dY e5m2 against the e4m3 W^T saved from the forward), dW = dY^T X (dY^T e5m2 against
// the e4m3 X^T saved from the forward), db = the column sums of the bf16 dY (f64 accumulation).
// Saves only fp8 copies (X^T, W^T) and their descales for backward. REQUIRES:
// fp8_linear_applies(x, w); a GPU of compute capability 8.9+ (kiln::Error naming the op otherwise).
// Compare linear_fp8 (core/ops/matmul.h): a forward GEMM on operands already in fp8.
Tensor fp8_linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

// Whether fp8_linear's forward GEMM uses cuBLASLt's fast accumulation (Transformer Engine's
// recipe: fast accumulation forward, the periodic promotion to fp32 for the gradients' GEMMs).
// KILN_FP8_FAST_ACCUM=1 (read once) turns it on; off by default until a GPU has measured it.
bool fp8_fast_accum_forward();
// Tests: forces the choice above (1 on, 0 off); -1 restores it.
void set_fp8_fast_accum_override(int on);

// Backward passes of fp8_linear that quantized dY to e4m3 because cuBLASLt offered no
// e5m2 x e4m3 kernel for the shape (0 where every backward ran in e5m2). Tests and logs.
int64_t fp8_e4m3_backward_count();

}  // namespace kiln
