// CUDA halves of the optimizers and gradient utilities (kernels in optimizer_cuda.cu): a fused
// multi-tensor AdamW that updates every parameter in a few launches, SGD, and the gradient
// sum-of-squares / scaling used by grad_norm, clipping and overflow checks, all without copying
// gradients to the host. Plain C++ declarations; only defined when KILN_WITH_CUDA.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "optim/optimizer.h"

namespace kiln::optim::cuda {

// One parameter's AdamW inputs. p, m, v: contiguous f32 on the GPU; g: contiguous f32, bf16, f16
// or f64 of the same numel on the same GPU. h, when defined: a contiguous bf16 or f16 tensor of
// p's numel on the same GPU, into which the kernel writes the updated p rounded to h's dtype (the
// bits kiln::cuda::multi_cast would write), so the next step's PrecastScope need not cast it
// (nn::PrecastCache, KILN_FUSED_PARAM_CAST).
struct AdamWSlot {
  Tensor p, g, m, v;
  double decay = 0.0;  // weight decay for this parameter (0: none)
  Tensor h;
};

// One AdamW step at step t (1-based) over all slots, rounding exactly as adamw_update does on the
// CPU. One launch per 48 tensors, a block per chunk of 64Ki elements (before 2026-12-06: at most
// 320 blocks and 32 tensors a launch; KILN_ADAMW_LAUNCH_BLOCKS=320 caps the blocks again).
// grad_scale != 1 multiplies each gradient first with the result of scale() then the step, bit for
// bit: f32 gradients in the kernel (rounded once, as scale's f32 multiply; the gradient in memory
// is left unscaled), others scaled in place by scale() before it.
//
// `launch` (KILN_OVERLAP_OPTIM, optim::Optimizer::step_grouped): stream, when set, is the CUDA
// stream (a cudaStream_t) the kernels go on instead of the compute stream; with zero_grads each
// gradient element is set to +0 right after the kernel reads it (what zero_grad would leave).
// Either one REQUIRES every gradient to be a contiguous f32 tensor, read in place: the step then
// makes no temporary and does no work on the compute stream, so nothing the caching allocator could
// hand to the compute stream is still read on the other stream.
struct AdamWLaunch {
  void* stream = nullptr;
  bool zero_grads = false;
};
void adamw_step(const std::vector<AdamWSlot>& slots, double lr, const AdamWOptions& o, int64_t t,
                double grad_scale = 1.0, const AdamWLaunch& launch = {});
// By default (KILN_ADAMW_VEC=0 turns it off) the kernel reads and writes p, m and v 16 bytes at a
// time (four elements a thread; the same arithmetic, so the same bits) where every pointer of a
// tensor is aligned for it (h, when given, to 8 bytes: four 16-bit elements). Tests and
// benchmarks force it: 1 on, 0 off, -1 the environment's.
void set_adamw_vectorized_override(int on);
// Tests: the most blocks a multi-tensor launch (AdamW, sum of squares, scale) may hold; a tensor
// with more chunks continues in the next launch. 0: no limit; -1: KILN_ADAMW_LAUNCH_BLOCKS's.
void set_launch_block_cap_override(int64_t blocks);

// p -= lr * (momentum buffer update), as sgd_update on the CPU; one launch per tensor.
void sgd_step(const Tensor& p, const Tensor& g, const Tensor& buf, double lr, double momentum,
              double weight_decay, bool nesterov = false);

// Sum of squares of every element of every tensor, in f64, in an order fixed by the tensor sizes
// (bit-identical across runs); only the final scalar is copied to the host. Any float dtypes,
// all on the current GPU.
double sum_squares(const std::vector<Tensor>& ts);

// Multiplies every tensor by s in place, rounding as mul_ does on the CPU.
void scale(const std::vector<Tensor>& ts, double s);

}  // namespace kiln::optim::cuda
