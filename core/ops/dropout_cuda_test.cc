// dropout on CUDA against the CPU reference (core/ops/dropout.cc): the same generator state draws
// the same mask on both devices, bit for bit (the device copy of the counter-based generator has
// the CPU's integer arithmetic, and kept values get the same single f32 multiply), so outputs and
// gradients are bit-identical to the CPU's for f32 / bf16 / f16 / f64, at several p, for a
// non-contiguous input, and across successive calls that advance the generator. Outputs and
// gradients in poisoned blocks, bit-identical reruns. Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/dropout.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(DropoutCuda, SameMaskAndValuesAsCpuBitForBit) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (double p : {0.1, 0.5, 0.9}) {
      const uint64_t drop_seed = gen.reserve(1) ^ seed;
      const std::string what = std::string("dropout ") + dtype_name(dt) + " p " + std::to_string(p);
      std::vector<Tensor> in = {rand_cpu({37, 1001}, dt, gen)};
      // Each call builds the same generator state, and draws twice so the second mask comes from
      // a non-zero offset.
      auto f = [p, drop_seed](const std::vector<Tensor>& v) {
        Generator g(drop_seed);
        Tensor a = dropout(v[0], p, g);
        Tensor b = dropout(v[0], p, g);
        return std::vector<Tensor>{a, b};
      };
      testing::GpuRun run = expect_gpu_matches_cpu(f, in, gen, what);
      ASSERT_EQ(run.outs.size(), 2u) << what;
      std::vector<Tensor> in_c = {in[0].detach().set_requires_grad(true)};
      std::vector<Tensor> want = f(in_c);
      for (int i = 0; i < 2; ++i) {
        EXPECT_TRUE(testing::bit_equal(run.outs[i].to(Device::cpu()), want[i]))
            << what << " draw " << i;
      }
      // The gradient is the mask times the scale: bit-identical too.
      Tensor g0 = rand_cpu({37, 1001}, dt, gen), g1 = rand_cpu({37, 1001}, dt, gen);
      Tensor want_g = kiln::grad(want, {g0, g1}, in_c)[0];
      Tensor xg = in[0].to(Device::cuda(0)).set_requires_grad(true);
      Tensor got_g = kiln::grad(f({xg}), {g0.to(Device::cuda(0)), g1.to(Device::cuda(0))}, {xg})[0];
      EXPECT_TRUE(testing::bit_equal(got_g.to(Device::cpu()), want_g)) << what << " gradient";
    }
  }
}

TEST(DropoutCuda, NonContiguousInputUsesRowMajorCounters) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({30, 20}, DType::kF32, gen);
  Generator gc(99), gg(99);
  Tensor want = dropout(x.transpose(0, 1), 0.3, gc);
  Tensor got = dropout(x.to(Device::cuda(0)).transpose(0, 1), 0.3, gg);
  EXPECT_TRUE(testing::bit_equal(got.to(Device::cpu()), want));
  EXPECT_EQ(gc.state().offset, gg.state().offset);
}

}  // namespace
}  // namespace kiln
