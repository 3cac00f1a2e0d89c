// The per-step parameter cast (label gpu; skip without a GPU): cuda::multi_cast against the
// convert kernel bit for bit (odd sizes, chunk and launch boundaries, misaligned views, more
// tensors than one launch takes), and nn::PrecastScope + the Cast node's 16-bit gradient
// pass-through: the same forward values and the same fp32 .grad (first backward and accumulation)
// as per-use casts, close to the CPU reference.
#include <gtest/gtest.h>

#include <optional>
#include <random>

#include "core/autograd.h"
#include "core/nn/layers.h"
#include "core/nn/precast.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/reduce.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using MultiCastCuda = GpuTest;

const Device kGpu = Device::cuda(0);

// Fresh inputs every run (the seed is printed on failure).
uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

TEST_F(MultiCastCuda, MatchesConvertBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  // 65536 elements per chunk, 512 chunks and 48 tensors per launch (multi_cast.cu).
  std::vector<int64_t> sizes = {1, 3, 4, 65535, 65536, 65537, 200003, 33554432 + 70000};
  for (int i = 0; i < 60; ++i) sizes.push_back(1 + 97 * i);
  Tensor big = random_tensor({1000}, seed, DType::kF32, kGpu);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(dt));
    std::vector<Tensor> src, dst;
    for (size_t i = 0; i < sizes.size(); ++i)
      src.push_back(random_tensor({sizes[i]}, seed + i, DType::kF32, kGpu, 3.0).detach());
    src.push_back(big.narrow(0, 1, 999));  // 4-byte aligned only: the scalar path
    src.push_back(big.narrow(0, 4, 20).reshape({4, 5}));
    Tensor out = Tensor::empty({12}, dt, kGpu);
    for (const Tensor& s : src) dst.push_back(Tensor::empty(s.shape(), dt, kGpu));
    dst[1] = out.narrow(0, 1, 3);  // a destination 2-byte aligned only
    cuda::multi_cast(src, dst);
    for (size_t i = 0; i < src.size(); ++i) {
      SCOPED_TRACE(i);
      EXPECT_TRUE(same_bits(dst[i], raw::convert(src[i], dt)));
    }
  }
}

// loss = sum((x W^T) * (x W^T)) + sum(W^T W) with W used twice through to_compute (as a tied
// embedding is), all in bf16; returns W's gradient after `backwards` passes. `via_f32_op` casts
// scale(W, 1) instead of W: the Cast nodes then convert their gradients to f32 (the path before
// the pass-through), and the two uses are summed in f32 at the scale node.
Tensor tied_grad(Tensor w, const Tensor& x, bool precast, int backwards, bool via_f32_op = false,
                 bool tied = true) {
  w.zero_grad();
  for (int i = 0; i < backwards; ++i) {
    std::optional<nn::PrecastScope> scope;
    if (precast) scope.emplace(std::vector<Tensor>{w}, DType::kBF16);
    if (precast && w.device().is_cuda())
      EXPECT_TRUE(nn::PrecastScope::lookup(w, DType::kBF16).defined());
    const Tensor src = via_f32_op ? scale(w, 1.0) : w;
    Tensor y =
        matmul(nn::to_compute(x, DType::kBF16), nn::to_compute(src, DType::kBF16), false, true);
    Tensor wb = nn::to_compute(src, DType::kBF16);
    Tensor loss = sum(mul(y, y));
    if (tied) loss = add(loss, sum(matmul(wb, wb, true, false)));
    backward({loss}, {Tensor()});
  }
  return w.grad();
}

TEST_F(MultiCastCuda, PrecastScopeKeepsValuesAndGradients) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed);
  Tensor wc = random_tensor({24, 40}, seed, DType::kF32, Device::cpu(), 0.3);
  Tensor xc = random_tensor({16, 40}, seed + 1, DType::kF32, Device::cpu());
  Tensor w = wc.to(kGpu).detach(), x = xc.to(kGpu).detach();
  w.set_requires_grad(true);
  wc.set_requires_grad(true);
  const Tensor per_use = tied_grad(w, x, false, 1).detach();
  const Tensor pre = tied_grad(w, x, true, 1).detach();
  ASSERT_EQ(pre.dtype(), DType::kF32);
  EXPECT_TRUE(same_bits(pre, per_use));
  // Bit for bit the gradient of converting in the Cast nodes and summing the two uses in f32.
  EXPECT_TRUE(same_bits(pre, tied_grad(w, x, false, 1, /*via_f32_op=*/true)));
  // Accumulation into an existing .grad: exactly twice the first (one use: the mixed f32 += bf16
  // add_; two uses: summed in f32 first).
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "one use");
    const Tensor once = tied_grad(w, x, true, 1, false, tied).detach();
    EXPECT_TRUE(same_bits(tied_grad(w, x, true, 2, false, tied), scale(once, 2.0)));
    EXPECT_TRUE(same_bits(once, tied_grad(w, x, false, 1, true, tied)));
  }
  // Against the CPU, which converts in the Cast node: bf16 tolerance.
  const Tensor ref = tied_grad(wc, xc, true, 1);
  KILN_EXPECT_CLOSE(pre.to(Device::cpu()), ref, 2e-2, 2e-2);
  // Outside a scope nothing is precomputed.
  EXPECT_FALSE(nn::PrecastScope::lookup(w, DType::kBF16).defined());
}

}  // namespace
}  // namespace kiln
