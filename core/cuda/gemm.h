// Row-major GEMMs through cuBLASLt on the current device's compute stream, with fused epilogues
// (bias, bias+GELU saving the GELU input, GELU gradient + bias gradient, bias gradient of A) and
// fp8 operands with per-tensor scales. Descriptors, layouts and the chosen algorithm are cached
// per problem (shape, dtypes, flags, pointer alignment), so steady-state calls do no heuristic
// query and always run the same algorithm (bit-identical repeats). Only compiled with
// KILN_WITH_CUDA.
#pragma once

#include <cstdint>
#include <optional>

#include "core/dtype.h"

namespace kiln::cuda {

enum class GemmEpilogue {
  kNone,
  kBias,        // D[i, j] = acc[i, j] + bias[j]                                  (bias: n)
  kGeluAux,     // aux = acc (+ bias[j] with a bias); D = gelu_tanh(aux)          (aux: m x n)
  kDGelu,       // D = acc * gelu_tanh'(aux)
  kDGeluBGrad,  // D = acc * gelu_tanh'(aux); bias_grad[j] = sum_i D[i, j]        (bias_grad: n)
  kBiasGradA,   // D = acc; bias_grad[i] = sum_k op(A)[i, k]                     (bias_grad: m)
};

// For each of `batch` problems:  D = alpha * op(A) @ op(B) + beta * C,  op(A): m x k,
// op(B): k x n, C, D: m x n, all row-major with row strides lda / ldb / ldc / ldd (elements) and
// batch strides stride_a / stride_b / stride_d. A stored as m x k (k x m when trans_a). C is D
// itself (in place) unless c is set: a separate C (D's dtype, batch 1 only), which the epilogue
// adds before any bias (D = alpha * op(A) @ op(B) + beta * C + bias: a residual add fused).
struct GemmParams {
  DType ab_dtype = DType::kF32;  // A and B: f32, f64, bf16, f16, or fp8 e4m3 / e5m2
  DType d_dtype = DType::kF32;   // D (and bias, aux, bias_grad): A's dtype, or bf16/f32 for fp8
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  bool trans_a = false;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  bool trans_b = false;
  void* d = nullptr;
  int64_t ldd = 0, stride_d = 0;
  const void* c = nullptr;  // a separate C (m x n, row stride ldc); null: C = D
  int64_t ldc = 0;
  int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;
  GemmEpilogue epilogue = GemmEpilogue::kNone;
  const void* bias = nullptr;      // kBias, kGeluAux (optional)
  void* aux = nullptr;             // kGeluAux (written), kDGelu / kDGeluBGrad (read)
  int64_t ld_aux = 0;              // row stride of aux; a multiple of 8
  void* bias_grad = nullptr;       // kDGeluBGrad, kBiasGradA
  const float* a_scale = nullptr;  // fp8 only: device pointers to the per-tensor scales
  const float* b_scale = nullptr;
  // fp8 only: B's dtype when it differs from A's (e5m2 x e4m3 in either order; never both e5m2).
  std::optional<DType> b_dtype;
  // fp8 only: cuBLASLt's fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM) instead of the
  // periodic promotion of the partial sums to fp32.
  bool fast_accum = false;
};

// Runs the GEMM. Returns false (and does nothing) when cuBLASLt offers no algorithm for this
// problem with its epilogue or separate C, or for an fp8 problem (callers then run an unfused
// fallback or report it); a plain GEMM (C = D) cuBLASLt declines runs through legacy cuBLAS
// (cublasGemmStridedBatchedEx). Throws kiln::Error on any cuBLAS failure.
bool gemm(const GemmParams& p);

// Number of cached GEMM plans (tests check that repeats reuse them).
int64_t gemm_plan_count();
// Number of plans whose algorithm was picked by timing (large 16-bit GEMMs with beta = 0, outside
// deterministic mode, unless KILN_GEMM_TUNE=0): the heuristic's top 8 each run on the first call.
int64_t gemm_tuned_plan_count();
// Number of GEMMs run with a separate C (tests check that a residual add took the epilogue path).
int64_t gemm_separate_c_count();

}  // namespace kiln::cuda
