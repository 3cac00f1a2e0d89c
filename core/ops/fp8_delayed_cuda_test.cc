// fp8 delayed scaling (core/ops/fp8.h: fp8_quantize_delayed, fp8_linear's Fp8LinearScaling; the
// ring of amaxes in core/ops/fp8.cu) on the GPU (label gpu; skips without a GPU, the linear test
// without compute capability 8.9+), fresh random inputs (seed printed on failure), every CUDA
// allocation poisoned (an unwritten element reads as NaN):
// 1. One history through a sequence of tensors of different amax (row-wise, transposed, both;
//    e4m3 and e5m2; seven uses, past the ring's three slots): use k's meta is {amax of use k - 1,
//    fp8_max / it, 1 / scale} (use 0: its own amax), and its bytes equal the host's
//    f32_to_fp8(clamp(x * scale, +-fp8_max)): values above the previous amax saturate.
// 2. The same tensor twice through one history: the second use equals current scaling
//    (fp8_quantize) bit for bit.
// 3. fp8_linear with a scaling, twice on the same inputs: the second call's output and x / w / b
//    gradients equal current scaling's bit for bit (x, w and dY each scaled by their own amax
//    again, dY's bias gradient from the transposing cast).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/cuda/runtime.h"
#include "core/dtype.h"
#include "core/ops/fp8.h"
#include "core/ops/fp8_test_util.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using fp8_test::bytes_of;
using fp8_test::fresh_seed;
using fp8_test::host_scale;
using fp8_test::kGpu;
using fp8_test::rand_cpu;
using Fp8DelayedCuda = testing::GpuTest;

float max_abs(const Tensor& x) {
  float m = 0;
  for (double d : x.to_vector()) m = std::max(m, std::fabs(static_cast<float>(d)));
  return m;
}

// The host's bytes of x scaled by `scale` with saturation (transposed: of x^T).
std::vector<uint8_t> host_bytes(const Tensor& x, float scale, DType t, bool transposed) {
  Tensor src = transposed ? x.transpose(0, 1).contiguous() : x;
  const float mx = static_cast<float>(fp8_max(t));
  std::vector<uint8_t> q;
  for (double d : src.to_vector())
    q.push_back(f32_to_fp8(std::clamp(static_cast<float>(d) * scale, -mx, mx), t));
  return q;
}

TEST_F(Fp8DelayedCuda, EachUseScalesByThePreviousUsesAmax) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  // Scales of the uses' inputs: growth (saturating), shrinkage, an all-zero tensor, growth again.
  const std::vector<double> stds = {1.0, 3.0, 0.5, 0.0, 2.0, 2.0, 8.0};
  for (DType t : {DType::kF8E4M3, DType::kF8E5M2}) {
    for (int mode = 0; mode < 3; ++mode) {
      const bool rowwise = mode != 1, transposed = mode != 0;
      Fp8History h;
      float prev = 0;
      int saturated = 0;
      for (size_t k = 0; k < stds.size(); ++k) {
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " rowwise " << rowwise
                                          << " transposed " << transposed << " use " << k);
        Tensor x = stds[k] == 0 ? Tensor::zeros({48, 80}, DType::kBF16)
                                : rand_cpu({48, 80}, stds[k], DType::kBF16, gen);
        const float own = max_abs(x);
        const float by = k == 0 ? own : prev;
        const float scale = host_scale(by, t);
        const Fp8Tensor r = fp8_quantize_delayed(x.to(kGpu), t, &h, rowwise, transposed);
        EXPECT_EQ(h.uses, static_cast<int64_t>(k + 1));
        const std::vector<double> meta = r.meta.to(Device::cpu()).to_vector();
        EXPECT_EQ(static_cast<float>(meta[0]), by);
        EXPECT_EQ(static_cast<float>(meta[1]), scale);
        EXPECT_EQ(static_cast<float>(meta[2]), 1.0f / scale);
        if (rowwise) EXPECT_EQ(bytes_of(r.data), host_bytes(x, scale, t, false));
        if (transposed) EXPECT_EQ(bytes_of(r.data_t), host_bytes(x, scale, t, true));
        if (own * scale > fp8_max(t)) ++saturated;
        prev = own;
      }
      EXPECT_GE(saturated, 2) << "the sequence should make some uses saturate";
    }
  }
}

TEST_F(Fp8DelayedCuda, SameTensorTwiceEqualsCurrentScaling) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType t : {DType::kF8E4M3, DType::kF8E5M2}) {
    Tensor x = rand_cpu({96, 64}, 1.5, DType::kBF16, gen).to(kGpu);
    Fp8History h;
    fp8_quantize_delayed(x, t, &h, true, true);
    const Fp8Tensor second = fp8_quantize_delayed(x, t, &h, true, true);
    const Fp8Tensor current = fp8_quantize(x, t, true, true);
    EXPECT_EQ(bytes_of(second.data), bytes_of(current.data)) << dtype_name(t);
    EXPECT_EQ(bytes_of(second.data_t), bytes_of(current.data_t)) << dtype_name(t);
    EXPECT_EQ(second.meta.to(Device::cpu()).to_vector(),
              current.meta.to(Device::cpu()).to_vector());
  }
}

TEST_F(Fp8DelayedCuda, LinearSecondCallEqualsCurrentScaling) {
  KILN_REQUIRE_FP8();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  Tensor x = rand_cpu({2, 32, 128}, 1.0, DType::kBF16, gen).to(kGpu);
  Tensor w = rand_cpu({96, 128}, 0.05, DType::kBF16, gen).to(kGpu);
  Tensor b = rand_cpu({96}, 0.1, DType::kBF16, gen).to(kGpu);
  Tensor gy = rand_cpu({2, 32, 96}, 1.0, DType::kBF16, gen).to(kGpu);
  // Output and x / w / b gradients of one fp8_linear call.
  auto run = [&](const std::shared_ptr<Fp8LinearScaling>& s) {
    Tensor xg = x.detach().set_requires_grad(true), wg = w.detach().set_requires_grad(true);
    Tensor bg = b.detach().set_requires_grad(true);
    Tensor y = fp8_linear(xg, wg, bg, s);
    std::vector<Tensor> out = kiln::grad({y}, {gy}, {xg, wg, bg});
    out.insert(out.begin(), y.detach());
    return out;
  };
  const std::vector<Tensor> current = run(nullptr);
  auto s = std::make_shared<Fp8LinearScaling>();
  run(s);
  const std::vector<Tensor> second = run(s);
  EXPECT_EQ(s->x.uses, 2);
  EXPECT_EQ(s->w.uses, 2);
  EXPECT_EQ(s->gy.uses, 2);
  const char* names[] = {"y", "dx", "dw", "db"};
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(names[i]);
    ASSERT_TRUE(second[i].defined());
    EXPECT_EQ(second[i].to(Device::cpu()).to_vector(), current[i].to(Device::cpu()).to_vector());
  }
  std::printf(
      "fp8_linear, delayed scaling: second call bit-identical to current scaling "
      "(y, dx, dw, db)\n");
}

}  // namespace
}  // namespace kiln
