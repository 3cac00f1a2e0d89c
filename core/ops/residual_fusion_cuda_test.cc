// The residual-fusion ops on CUDA against their CPU composition (core/ops/residual_fusion_test.cc
// holds the CPU side), label gpu, skipping where no GPU is visible:
// - linear_add (bf16 / f16 / f32, with and without bias, 2-D and 3-D x): values and the gradients
//   of x, w, b and residual; for 16-bit operands the add ran as the GEMM's separate C (the
//   cuBLASLt call count of core/cuda/gemm.h rises, the node is LinearAddCuda).
// - linear_add's weight gradient added straight into an f32 parameter's .grad (through the bf16
//   cast, as linear's), the residual's gradient the upstream one bit for bit; a 1024^3 bf16
//   problem (a plan picked by timing) right, its residual left untouched, repeats bit-identical.
// - mlp_gelu with a residual (bf16 / f32), the same checks.
// - rms_norm_with_skip / layer_norm_with_skip (f32 / bf16 / f64, aligned and misaligned): the
//   gradient into both outputs, only the skip output, only the norm's.
// The ops' results are scaled by 0.5 (or 0.75) before they leave the test function: the residual's
// gradient is the upstream gradient itself, which must be a tensor the backward wrote (the harness
// checks every gradient landed in a poisoned block). Every case: outputs in poisoned blocks, a
// bit-identical rerun (cuda_op_test_util.h states the
// tolerance: bf16 1e-2 of each tensor's largest magnitude, the CPU rounding linear's output to
// bf16 before the add where the GPU rounds once).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/cuda/gemm.h"
#include "core/cuda/runtime.h"
#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/layernorm.h"
#include "core/ops/matmul.h"
#include "core/ops/rmsnorm.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

TEST(LinearAddCuda, MatchesCpuAndRunsTheEpilogue) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    Shape x;
    int64_t out;
  };
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (const Case& c : {Case{{4, 33, 64}, 96}, Case{{130, 768}, 768}, Case{{16, 40}, 24}}) {
      for (bool bias : {true, false}) {
        const int64_t in_f = c.x.back();
        Shape r_shape = c.x;
        r_shape.back() = c.out;
        std::vector<Tensor> in = {rand_cpu(c.x, dt, gen), rand_cpu({c.out, in_f}, dt, gen),
                                  rand_cpu(r_shape, dt, gen)};
        if (bias) in.push_back(rand_cpu({c.out}, dt, gen));
        const std::string what = std::string("linear_add ") + dtype_name(dt) + " " +
                                 shape_str(c.x) + (bias ? " bias" : "");
        const int64_t before = cuda::gemm_separate_c_count();
        testing::GpuRun r = expect_gpu_matches_cpu(
            [bias](const std::vector<Tensor>& v) {
              return std::vector<Tensor>{
                  scale(linear_add(v[0], v[1], bias ? v[3] : Tensor(), v[2]), 0.5)};
            },
            in, gen, what);
        ASSERT_FALSE(r.outs.empty()) << what;
        ASSERT_TRUE(r.outs[0].grad_fn() && r.outs[0].grad_fn()->next[0].fn) << what;
        EXPECT_STREQ(r.outs[0].grad_fn()->next[0].fn->name(), "LinearAddCuda") << what;
        // 16-bit: cuBLASLt runs these aligned problems with a separate C (3 runs: the poisoned
        // one, the rerun, and none on the CPU reference).
        if (dt != DType::kF32)
          EXPECT_GE(cuda::gemm_separate_c_count() - before, 2) << what << ": epilogue not taken";
      }
    }
  }
}

Tensor f64_cpu(const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64).detach(); }

// max |a - b| / max |b| (f64 copies on the CPU).
double rel_err(const Tensor& a, const Tensor& b) {
  return testing::max_abs(sub(f64_cpu(a), f64_cpu(b))) / testing::max_abs(f64_cpu(b));
}

TEST(LinearAddCuda, WeightGradientIntoF32GradAndResidualGradientIsTheUpstream) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  const Device gpu = Device::cuda(0);
  const int64_t rows = 256, in = 192, out = 128;
  Tensor x = rand_cpu({rows, in}, DType::kBF16, gen).to(gpu);
  Tensor gy = rand_cpu({rows, out}, DType::kBF16, gen).to(gpu);
  Tensor w = scale(rand_cpu({out, in}, DType::kF32, gen), 0.05).to(gpu).detach();
  w.set_requires_grad(true);
  Tensor g0 = rand_cpu({out, in}, DType::kF32, gen);
  w.set_grad(g0.to(gpu));
  Tensor r = rand_cpu({rows, out}, DType::kBF16, gen).to(gpu).detach();
  r.set_requires_grad(true);
  linear_add(x, w.to(DType::kBF16), Tensor(), r).backward(gy);
  // A bf16-rounded dW would be ~2e-3 off relative; 2e-4 tells the unrounded f32 sum apart.
  Tensor ref = add(f64_cpu(g0), matmul(f64_cpu(gy), f64_cpu(x), true, false));
  EXPECT_LT(rel_err(w.grad(), ref), 2e-4) << "dW not added unrounded into .grad";
  EXPECT_TRUE(testing::bit_equal(r.grad().to(Device::cpu()), gy.to(Device::cpu())));
}

TEST(LinearAddCuda, LargeTunedGemmLeavesTheResidualUntouched) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  const Device gpu = Device::cuda(0);
  // 1024^3 multiply-adds in bf16: at the tuning threshold (gemm.cc tune_wanted), so the timing
  // runs write D several times; C must come out unchanged and the result right.
  Tensor x = rand_cpu({1024, 1024}, DType::kBF16, gen);
  Tensor w = scale(rand_cpu({1024, 1024}, DType::kF32, gen), 0.05).to(DType::kBF16);
  Tensor b = rand_cpu({1024}, DType::kBF16, gen), r = rand_cpu({1024, 1024}, DType::kBF16, gen);
  Tensor rg = r.to(gpu);
  const int64_t tuned = cuda::gemm_tuned_plan_count(), sep = cuda::gemm_separate_c_count();
  Tensor y = linear_add(x.to(gpu), w.to(gpu), b.to(gpu), rg);
  if (!cuda::deterministic() && std::getenv("KILN_GEMM_TUNE") == nullptr)
    EXPECT_EQ(cuda::gemm_tuned_plan_count(), tuned + 1);
  EXPECT_EQ(cuda::gemm_separate_c_count(), sep + 1);
  EXPECT_TRUE(testing::bit_equal(rg.to(Device::cpu()), r)) << "the residual (C) was written";
  // bf16 output: one rounding (2^-9 relative) of values ~ |r| + |x w^T| with k = 1024.
  EXPECT_LT(rel_err(y, linear_add(f64_cpu(x), f64_cpu(w), f64_cpu(b), f64_cpu(r))), 1e-2);
  EXPECT_TRUE(testing::bit_equal(
      y.to(Device::cpu()), linear_add(x.to(gpu), w.to(gpu), b.to(gpu), rg).to(Device::cpu())));
}

TEST(MlpGeluCuda, ResidualMatchesCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kBF16, DType::kF32}) {
    const int64_t c = 64, h = 256;
    std::vector<Tensor> in = {rand_cpu({4, 33, c}, dt, gen), rand_cpu({h, c}, dt, gen),
                              rand_cpu({h}, dt, gen),        rand_cpu({c, h}, dt, gen),
                              rand_cpu({c}, dt, gen),        rand_cpu({4, 33, c}, dt, gen)};
    const int64_t before = cuda::gemm_separate_c_count();
    expect_gpu_matches_cpu(
        [](const std::vector<Tensor>& v) {
          return std::vector<Tensor>{scale(mlp_gelu(v[0], v[1], v[2], v[3], v[4], v[5]), 0.5)};
        },
        in, gen, std::string("mlp_gelu residual ") + dtype_name(dt));
    if (dt == DType::kBF16)
      EXPECT_GE(cuda::gemm_separate_c_count() - before, 2) << "mlp_gelu: epilogue not taken";
  }
}

// mode 0: the gradient into both outputs, 1: only the skip output, 2: only the norm's.
std::vector<Tensor> skip_outputs(const std::pair<Tensor, Tensor>& ty, int mode) {
  if (mode == 1) return {scale(ty.first, 0.75)};
  if (mode == 2) return {ty.second};
  return {ty.second, scale(ty.first, 0.75)};
}

TEST(NormWithSkipCuda, MatchesCpuForEveryGradientPattern) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (const Shape& s : {Shape{4, 33, 768}, Shape{300, 100}, Shape{70, 2048}}) {
      for (int mode : {0, 1, 2}) {
        for (bool misalign : {false, true}) {
          testing::GpuOptions opt;
          opt.misalign = misalign;
          const std::string what = std::string(dtype_name(dt)) + " " + shape_str(s) + " mode " +
                                   std::to_string(mode) + (misalign ? " misaligned" : "");
          std::vector<Tensor> in = {rand_cpu(s, dt, gen), rand_cpu({s.back()}, dt, gen),
                                    rand_cpu({s.back()}, dt, gen)};
          expect_gpu_matches_cpu(
              [mode](const std::vector<Tensor>& v) {
                return skip_outputs(rms_norm_with_skip(v[0], v[1], 1e-5), mode);
              },
              {in[0], in[1]}, gen, "rms_norm_with_skip " + what, opt);
          expect_gpu_matches_cpu(
              [mode](const std::vector<Tensor>& v) {
                return skip_outputs(layer_norm_with_skip(v[0], v[1], v[2], 1e-5), mode);
              },
              in, gen, "layer_norm_with_skip " + what, opt);
        }
      }
    }
  }
}

}  // namespace
}  // namespace kiln
