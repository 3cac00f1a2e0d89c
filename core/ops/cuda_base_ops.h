// CUDA entry points of the elementwise, reduction and matmul ops (kernels in elementwise.cu,
// reduce.cu, matmul.cu), declared once so the .cc dispatchers and the .cu definitions cannot
// drift. Plain C++: no CUDA headers. Only meaningful when KILN_WITH_CUDA; every tensor argument
// is on the current device's GPU unless said otherwise.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace kiln::ops {

// True when t is a CUDA tensor and the CUDA kernels can run. A CUDA tensor without a GPU (or
// without a CUDA build) returns false and so reaches the CPU path's device check, which names the
// op. Calls into kiln::cuda stay inside `#if KILN_WITH_CUDA`.
inline bool run_on_cuda(const Tensor& t) {
#if KILN_WITH_CUDA
  return t.device().is_cuda() && cuda_available();
#else
  (void)t;
  return false;
#endif
}

}  // namespace kiln::ops

namespace kiln::cuda {

// ---- elementwise (elementwise.cu) ----
enum class BinaryOp : int { kAdd = 0, kSub = 1, kMul = 2 };

// a op b with NumPy broadcasting. a, b: same float dtype (f32, f64, bf16, f16), same device.
// Computes in f32 (f64 for f64) and rounds to a's dtype; the result is contiguous.
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
// a op s, s taken in a's compute type (as the CPU scalar_like does).
Tensor binary_scalar(BinaryOp op, const Tensor& a, double s);
// Sums x over broadcast dims down to `shape` (deterministic; accumulates in f64).
Tensor sum_to(const Tensor& x, const Shape& shape);
// into (f32, contiguous, (M)) := [into +] the column sums of x2 (rows, M) (written over when
// overwrite: a stale .grad). The 16-byte column kernel where x2 allows it.
void column_sums_into(const Tensor& x2, const Tensor& into, bool overwrite);
// dst += alpha * src (same shape, any float dtypes and strides), as the CPU add_ rounds.
void add_inplace(const Tensor& dst, const Tensor& src, double alpha);
// dst *= s in place.
void mul_inplace(const Tensor& dst, double s);
// dst[i] = src[i] converted (contiguous f32 -> contiguous bf16 or f16, same numel), every pair in
// a few launches (multi_cast.cu); rounds as the convert kernel.
void multi_cast(const std::vector<Tensor>& src, const std::vector<Tensor>& dst);
// Sum of squares of all elements in f64 (deterministic); copies one scalar to the host.
double sum_squares(const Tensor& x);

// ---- reductions (reduce.cu) ----
// Sums x (float dtype, any strides) over the dims d with reduce[d] set, divides by div, squares
// each element first when `square`, and writes out (contiguous, numel = product of the kept dims,
// any float dtype; kept dims in x's order). Fixed summation order; accumulates in f64.
void reduce_sum(const Tensor& x, const std::vector<bool>& reduce, const Tensor& out, double div,
                bool square);
// g / div broadcast back to in_shape over `dim` (nullopt: g is 0-dim, broadcast everywhere).
// Returns a contiguous tensor of g's dtype.
Tensor reduce_expand(const Tensor& g, const Shape& in_shape, std::optional<int64_t> dim,
                     double div);

// ---- matmul (matmul.cu; no autograd, every float dtype, operands may be strided views) ----
// op(a) @ op(b) with the shapes of kiln::matmul (core/ops/matmul.h).
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
// x2: (M, IN), w: (OUT, IN), b: (OUT) or undefined, residual: (M, OUT) in x2's dtype or
// undefined. Returns x2 w^T + b (+ residual) (M, OUT), the bias (and the residual, as the GEMM's
// separate C with beta = 1) fused into the GEMM epilogue where cuBLASLt offers it.
Tensor linear_forward(const Tensor& x2, const Tensor& w, const Tensor& b,
                      const Tensor& residual = Tensor());
// gelu_tanh(x2 w^T + b) (M, OUT); *pre receives the GELU input (M, OUT) for backward. bf16/f16:
// bias and GELU fused into the epilogue (GELU_AUX); otherwise a GEMM then the exact GELU kernel.
Tensor linear_gelu_forward(const Tensor& x2, const Tensor& w, const Tensor& b, Tensor* pre);
// Gradients of y = x2 w^T + b given gy (M, OUT): gx (M, IN), gw (OUT, IN) and gb (OUT), each only
// when asked; gb is fused into the gw GEMM (BGRADB epilogue) when both are asked. With `gw_into`
// (f32, contiguous (OUT, IN); need_w set) the gw GEMM adds into it instead (beta = 1, the f32
// accumulator unrounded; autograd's accumulation_target) and *gw stays undefined; with
// gw_overwrite it writes gw_into over (beta = 0: a stale .grad, its old values never read). With
// `gb_into` (f32, (OUT); need_b set) the column sums of gy go into it likewise (written over with
// gb_overwrite) and *gb stays undefined.
void linear_backward(const Tensor& gy, const Tensor& x2, const Tensor& w, bool need_x, bool need_w,
                     bool need_b, Tensor* gx, Tensor* gw, Tensor* gb,
                     const Tensor& gw_into = Tensor(), bool gw_overwrite = false,
                     const Tensor& gb_into = Tensor(), bool gb_overwrite = false);
// The weight gradients of the equal pieces of a packed linear as one strided batched GEMM:
// into[i] (f32, contiguous (R, IN)) = gy[:, i R : (i + 1) R]^T @ x2 (beta = 0 with overwrite, else
// added), gy (M, n R) and x2 (M, IN) contiguous 16-bit, when the into[i] lie one positive stride
// apart in memory (the batch stride of D; A's is R columns, B's 0), every stride a multiple of 16
// bytes and no two pieces overlapping. Returns false (nothing run) otherwise. One launch with
// n x the tiles of a piece's GEMM fills the last wave of the GPU that each piece's own GEMM leaves
// part empty (Llama 1B's gate / up pieces: 704 tiles of 128 x 128 each on 132 SMs).
bool packed_wgrads_batched(const Tensor& gy, const Tensor& x2, const std::vector<Tensor>& into,
                           bool overwrite);
// g * gelu_tanh'(pre), elementwise (same shapes).
Tensor gelu_input_grad(const Tensor& g, const Tensor& pre);
// How matmul_dgelu computes a 16-bit hidden gradient (f32 and unaligned shapes always take the
// GEMM, then the elementwise GELU gradient, then sum_to):
enum class DGeluPath {
  kKernel,         // plain GEMM, then dgelu_bgrad_inplace (one kiln pass: factor + column sums)
  kEpilogue,       // GEMM with the DGELU epilogue (the factor in the GEMM), then sum_to for gb1
  kEpilogueBGrad,  // GEMM with the DGELU_BGRAD epilogue (cuBLASLt sums gb1 too)
};
// The path KILN_DGELU picks: unset -> kEpilogue (measured fastest), "kernel" -> kKernel,
// "cublaslt" -> kEpilogueBGrad (read once).
DGeluPath default_dgelu_path();
// (gy @ w2) * gelu_tanh'(pre): gy (M, C), w2 (C, HID), pre (M, HID) -> (M, HID); with gb1, also
// its column sums (HID), by `path` (falling back to the next unfused path where it cannot run).
Tensor matmul_dgelu(const Tensor& gy, const Tensor& w2, const Tensor& pre, Tensor* gb1,
                    DGeluPath path = default_dgelu_path());
// dpre (M, HID) := dpre * gelu_tanh'(pre) in place; with gb1, *gb1 = its column sums (HID), f32
// partials over chunks of rows added in a fixed order. dpre, pre: contiguous bf16 / f16, one
// shape, HID % 8 == 0, both 16-byte aligned (the caller checks).
void dgelu_bgrad_inplace(const Tensor& dpre, const Tensor& pre, Tensor* gb1);
// (x_scale x) @ (w_scale w)^T (+ b): x (M, K), w (N, K) fp8; output bf16 or f32. sm_89+.
Tensor linear_fp8(const Tensor& x, const Tensor& w, double x_scale, double w_scale, DType out_dtype,
                  const Tensor& b);

}  // namespace kiln::cuda
