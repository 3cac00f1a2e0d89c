// Internal: the CUDA halves of causal_attention (core/ops/attention.h), for attention.cc's
// dispatch and the GPU tests. The kiln kernel lives in attention.cu; the cuDNN path in
// core/cuda/cudnn_sdpa.h. Only compiled with CUDA.
#pragma once

#include <string>

#include "core/tensor.h"

namespace kiln::attention_cuda {

// Which implementation served the latest causal_attention forward or backward on this thread.
enum class Impl { kNone, kCudnn, kKiln };
Impl last_forward_impl();
Impl last_backward_impl();
const char* impl_name(Impl i);

// The kiln flash-attention kernel (tiled, online softmax, f32 accumulation); deterministic.
// Shapes as in causal_attention; q, k, v: f32, bf16 or f16 with unit stride in D, D <= 256.
//   out: (B, Hq, T, D) contiguous, q's dtype; lse: (B, Hq, T) f32 contiguous. Both written.
void kiln_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                            const Tensor& out, const Tensor& lse);
// dq (B, Hq, T, D), dk, dv (B, Hkv, T, D): contiguous, q's dtype, written; dk and dv summed over
// each group's query heads in a fixed order. out, dout: (B, Hq, T, D) with unit stride in D.
void kiln_attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& dout, const Tensor& lse, double scale, const Tensor& dq,
                             const Tensor& dk, const Tensor& dv);

// The largest head dim the kiln kernel takes.
constexpr int64_t kKilnMaxHeadDim = 256;

}  // namespace kiln::attention_cuda
