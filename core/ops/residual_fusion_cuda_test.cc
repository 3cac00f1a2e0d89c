// The residual-fusion ops on CUDA against their CPU composition (core/ops/residual_fusion_test.cc
// holds the CPU side), label gpu, skipping where no GPU is visible:
// - linear_add (bf16 / f16 / f32, with and without bias, 2-D and 3-D x): values and the gradients
//   of x, w, b and residual; for 16-bit operands the add ran as the GEMM's separate C (the
//   cuBLASLt call count of core/cuda/gemm.h rises, the node is LinearAddCuda).
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

#include <string>
#include <vector>

#include "core/cuda/gemm.h"
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
