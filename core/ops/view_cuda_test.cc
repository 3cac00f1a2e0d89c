// CUDA views and copies against the CPU (label gpu; skip without a GPU): reshape / transpose /
// permute / narrow / split / concat / contiguous / clone / cast / to_device on GPU tensors, forward
// values and gradients bit-identical to the same ops on the CPU (they only move and convert
// values), with poisoned (NaN) allocations.
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/ops/reduce.h"
#include "core/ops/view.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using ViewCuda = GpuTest;

const Device kGpu = Device::cuda(0);

// A chain of view and copy ops ending in a scalar-weighted sum, so every op has a gradient.
Tensor chain(const Tensor& x, const Tensor& w) {
  Tensor a = permute(x, {2, 0, 1});                 // (6, 4, 5)
  Tensor b = narrow(a, 1, 1, 2);                    // (6, 2, 5)
  std::vector<Tensor> parts = split(b, {2, 4}, 0);  // (2, 2, 5), (4, 2, 5)
  Tensor c = concat({parts[1], parts[0], b}, 0);    // (12, 2, 5)
  Tensor d = reshape(contiguous(transpose(c, 1, 2)), {12, 10});
  Tensor e = cast(clone(d), DType::kBF16);
  Tensor f = cast(e, DType::kF32);
  return mul(f, w);
}

TEST_F(ViewCuda, ViewsAndCopiesMatchCpuForwardAndBackward) {
  Tensor x = random_tensor({4, 5, 6}, 1), w = random_tensor({12, 10}, 2);
  Tensor gx = x.to(kGpu).detach(), gw = w.to(kGpu).detach();
  x.set_requires_grad(true);
  gx.set_requires_grad(true);
  Tensor yc = chain(x, w), yg = chain(gx, gw);
  EXPECT_EQ(yg.device(), kGpu);
  EXPECT_TRUE(same_bits(yg, yc));
  Tensor gy = random_tensor({12, 10}, 3);
  yc.backward(gy);
  yg.backward(gy.to(kGpu));
  EXPECT_EQ(gx.grad().device(), kGpu);
  EXPECT_TRUE(same_bits(gx.grad(), x.grad()));
}

TEST_F(ViewCuda, ToDeviceRoundTripAndGradient) {
  Tensor x = random_tensor({7, 3}, 4, DType::kBF16);
  x.set_requires_grad(true);
  Tensor g = to_device(x, kGpu);
  EXPECT_EQ(g.device(), kGpu);
  EXPECT_TRUE(same_bits(g, x));
  Tensor back = to_device(scale(g, 2.0), Device::cpu());
  EXPECT_TRUE(same_bits(back, scale(x, 2.0)));
  sum(back).backward();
  EXPECT_EQ(x.grad().device(), Device::cpu());
  EXPECT_TRUE(same_bits(x.grad(), Tensor::full({7, 3}, 2.0, DType::kBF16)));
}

}  // namespace
}  // namespace kiln
