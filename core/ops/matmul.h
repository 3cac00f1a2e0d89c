// Matrix products: matmul (batched, with transpose flags so backward never materialises a
// transpose) and linear (x W^T + b, PyTorch's weight layout), with fused linear+GELU, a fused
// GELU MLP and an fp8 linear. CPU GEMMs go through OpenBLAS, CUDA ones through cuBLASLt.
#pragma once

#include "core/tensor.h"

namespace kiln {

// op(a) @ op(b) where op transposes the last two dims when the flag is set.
// a: (..., M, K) (or (..., K, M) with trans_a); b: (K, N) shared across the batch, or (..., K, N)
// with the same leading dims as a (or (..., N, K) with trans_b). Result: (..., M, N).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// x: (..., IN), w: (OUT, IN), b: (OUT) or undefined. Result: (..., OUT). On CUDA the bias is
// fused into the GEMM epilogue and its gradient into the weight-gradient GEMM.
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

// linear(x, w, b) + residual, residual: (..., OUT) as the result, in x's dtype. On CUDA the add is
// the GEMM's epilogue (cuBLASLt's separate C operand, beta = 1: no pass of its own) where cuBLASLt
// offers it; residual's gradient is the upstream gradient itself, x / w / b's are linear's. On
// the CPU it is linear then add (the same bits as that composition).
Tensor linear_add(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& residual);

// gelu(linear(x, w, b)) with GPT-2's tanh GELU. Shapes as linear. On CUDA with bf16/f16 the bias
// and GELU run in the GEMM epilogue, which also stores the GELU input for backward.
Tensor linear_gelu(const Tensor& x, const Tensor& w, const Tensor& b = Tensor());

// linear(linear_gelu(x, w1, b1), w2, b2): the transformer MLP as one op. x: (..., C),
// w1: (H, C), b1: (H) or undefined, w2: (C2, H), b2: (C2) or undefined. Result: (..., C2). On
// CUDA the backward computes the hidden gradient with the GELU gradient and b1's gradient fused
// into that GEMM's epilogue (bf16/f16), and b2's gradient fused into w2's weight-gradient GEMM.
// With a residual ((..., C2), x's dtype) it returns the MLP's output + residual, the add fused
// into the second GEMM as linear_add's.
Tensor mlp_gelu(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                const Tensor& b2, const Tensor& residual = Tensor());

// (x_scale * x) @ (w_scale * w)^T (+ b) with fp8 operands (e4m3 or e5m2, not both e5m2), fp32
// accumulation and a bf16 or f32 result; no autograd. x: (M, K), w: (N, K), b: (N) or undefined;
// K and N multiples of 16. CUDA only, compute capability 8.9+ (Hopper).
Tensor linear_fp8(const Tensor& x, const Tensor& w, double x_scale, double w_scale,
                  DType out_dtype = DType::kBF16, const Tensor& b = Tensor());

// A CUDA linear whose weight is a concat along dim 0 (concat_or_view of per-linear weights, as
// Llama's packed q/k/v and gate/up) adds each piece's weight gradient straight into that piece's
// f32 .grad (one GEMM per piece over its column block of the output gradient, beta = 0 over a
// stale .grad) when every piece offers its .grad (concat_accumulation_targets, core/ops/view.h),
// the blocks are 16-byte aligned, and neither KILN_DIRECT_WGRAD nor KILN_PACKED_DIRECT_WGRAD is 0
// (the latter on by default since 2026-12-06: +1.5% on Llama 1B, H100). Tests: force the latter
// (1 on, 0 off, -1 the environment's) and count the pieces.
void set_packed_direct_wgrad_override(int on);
int64_t packed_direct_wgrad_pieces();
// Where the pieces are equal and their .grads lie one positive stride apart in memory (as
// DataParallel allocates Llama's gate / up .grads), the pieces' GEMMs run as one strided batched
// GEMM (cuda::packed_wgrads_batched: fills the last wave the separate GEMMs leave part empty)
// unless KILN_PACKED_WGRAD_BATCHED=0. Tests: force it (1, 0, -1) and count the batched GEMMs.
void set_packed_wgrad_batched_override(int on);
int64_t packed_wgrad_batched_gemms();

namespace raw {
// c = alpha * op(a) @ op(b) + beta * c for contiguous f32/f64 2-D operands (row-major).
// REQUIRES: a, b, c are CPU, contiguous, the same compute dtype, and the shapes agree.
void gemm(const Tensor& a, const Tensor& b, const Tensor& c, bool trans_a, bool trans_b,
          double alpha = 1.0, double beta = 0.0);
// How many times gemm() ran in this process (tests count the GEMMs of a backward pass with it).
int64_t gemm_calls();
}  // namespace raw

}  // namespace kiln
