// layer_norm and add_layer_norm on CUDA against the CPU reference (core/ops/layernorm.cc), forward
// and the gradients of x, (residual,) weight and bias, for f32 / bf16 / f16 / f64; rows of 1000
// (not a multiple of 32) and 4096 columns, enough rows for several dW chunks (and for chunks
// longer than 64 rows), no bias, a strided
// x; the fused residual op against add + layer_norm on the CPU, with gradients flowing into both
// of its outputs. Both kernel families of core/ops/norm_kernels.cuh: the warp-per-row kernels
// (C = 768, 1600, 2048 and the small C above, bf16 / f16 / f32) and the block-per-row ones (f64, C
// = 7, 2056, 4096, 1600 in f32, misaligned inputs, and every shape under KILN_NORM_KERNEL=general).
// Every case: outputs in poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the
// tolerance). Skips where no GPU is visible.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/layernorm.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using testing::rand_cpu;

struct Case {
  Shape x_shape;
  bool bias;
};

// Sets KILN_NORM_KERNEL for the scope ("" unsets it).
class ScopedNormKernel {
 public:
  explicit ScopedNormKernel(const char* v) {
    if (const char* old = std::getenv("KILN_NORM_KERNEL")) old_ = old, had_ = true;
    if (*v) {
      setenv("KILN_NORM_KERNEL", v, 1);
    } else {
      unsetenv("KILN_NORM_KERNEL");
    }
  }
  ~ScopedNormKernel() {
    if (had_) {
      setenv("KILN_NORM_KERNEL", old_.c_str(), 1);
    } else {
      unsetenv("KILN_NORM_KERNEL");
    }
  }

 private:
  std::string old_;
  bool had_ = false;
};

TEST(LayerNormCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const Case cases[] = {{{4, 33, 768}, true},  {{5, 1000}, true}, {{300, 96}, false},
                        {{3, 4096}, true},     {{7}, true},       {{1100, 40}, true},
                        {{40000, 8}, true},     // > 512 row chunks of 64: longer chunks
                        {{2, 40, 1600}, true},  // GPT-2 1.5B: 7 vectors per lane, 24 lanes idle
                        {{70, 2048}, false},    // the widest warp-per-row row of bf16 / f16
                        {{9, 2056}, true}};     // one vector more: block per row
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      const int64_t ch = c.x_shape.back();
      std::vector<Tensor> in = {rand_cpu(c.x_shape, dt, gen), rand_cpu({ch}, dt, gen)};
      if (c.bias) in.push_back(rand_cpu({ch}, dt, gen));
      const std::string what = std::string("layer_norm ") + dtype_name(dt) + " " +
                               shape_str(c.x_shape) + (c.bias ? "" : " no bias");
      expect_gpu_matches_cpu(
          [&](const std::vector<Tensor>& v) {
            return std::vector<Tensor>{
                layer_norm(v[0], v[1], v.size() > 2 ? v[2] : Tensor(), 1e-5)};
          },
          in, gen, what);
    }
  }
}

// The same inputs through every kernel family (KILN_NORM_KERNEL unset, "general", "warp" and
// "group": the backward of wide rows by a warp per row or a 4-warp group per row; 301 rows make
// ten chunks of the group backward, the last one short), and misaligned inputs (which take the
// block-per-row kernels), plain and with the residual add.
TEST(LayerNormCuda, WarpAndBlockKernelsAndMisalignedInputs) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (const char* impl : {"", "general", "warp", "group"}) {
    ScopedNormKernel env(impl);
    for (bool misalign : {false, true}) {
      for (DType dt : {DType::kBF16, DType::kF32}) {
        for (const Shape& s : {Shape{130, 768}, Shape{3, 33, 1600}, Shape{301, 2048}}) {
          const int64_t ch = s.back();
          const std::string what = std::string("KILN_NORM_KERNEL='") + impl + "' " +
                                   dtype_name(dt) + " " + shape_str(s) +
                                   (misalign ? " misaligned" : "");
          testing::GpuOptions opt;
          opt.misalign = misalign;
          expect_gpu_matches_cpu(
              [](const std::vector<Tensor>& v) {
                return std::vector<Tensor>{layer_norm(v[0], v[1], v[2])};
              },
              {rand_cpu(s, dt, gen), rand_cpu({ch}, dt, gen), rand_cpu({ch}, dt, gen)}, gen,
              "layer_norm " + what, opt);
          expect_gpu_matches_cpu(
              [](const std::vector<Tensor>& v) {
                auto [sum, y] = add_layer_norm(v[0], v[1], v[2], v[3]);
                return std::vector<Tensor>{sum, y};
              },
              {rand_cpu(s, dt, gen), rand_cpu(s, dt, gen), rand_cpu({ch}, dt, gen),
               rand_cpu({ch}, dt, gen)},
              gen, "add_layer_norm " + what, opt);
        }
      }
    }
  }
}

TEST(LayerNormCuda, RejectsAnUnknownKernelChoice) {
  KILN_SKIP_WITHOUT_GPU();
  ScopedNormKernel env("fastest");
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({4, 768}, DType::kBF16, gen).to(Device::cuda(0));
  Tensor w = rand_cpu({768}, DType::kBF16, gen).to(Device::cuda(0));
  EXPECT_THROW((void)layer_norm(x, w), Error);
}

TEST(LayerNormCuda, StridedInputAndLargeEps) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  std::vector<Tensor> in = {rand_cpu({64, 24}, DType::kF32, gen), rand_cpu({64}, DType::kF32, gen),
                            rand_cpu({64}, DType::kF32, gen)};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        // (24, 64) view of a (64, 24) tensor: not contiguous.
        return std::vector<Tensor>{layer_norm(v[0].transpose(0, 1), v[1], v[2], 0.5)};
      },
      in, gen, "layer_norm transposed x, eps 0.5");
}

TEST(AddLayerNormCuda, FusedMatchesAddThenLayerNormOnCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    for (const Shape& s : {Shape{4, 33, 768}, Shape{300, 100}, Shape{70, 1600}}) {
      const int64_t ch = s.back();
      for (bool bias : {true, false}) {
        std::vector<Tensor> in = {rand_cpu(s, dt, gen), rand_cpu(s, dt, gen),
                                  rand_cpu({ch}, dt, gen)};
        if (bias) in.push_back(rand_cpu({ch}, dt, gen));
        const std::string what = std::string("add_layer_norm ") + dtype_name(dt) + " " +
                                 shape_str(s) + (bias ? "" : " no bias");
        // On the CPU add_layer_norm is add + layer_norm; on CUDA one fused kernel. Both outputs
        // (the residual stream and the normalised value) get an upstream gradient.
        expect_gpu_matches_cpu(
            [](const std::vector<Tensor>& v) {
              auto [sum, y] = add_layer_norm(v[0], v[1], v[2], v.size() > 3 ? v[3] : Tensor());
              return std::vector<Tensor>{sum, y};
            },
            in, gen, what);
      }
    }
  }
}

TEST(AddLayerNormCuda, ResidualSumIsRoundedBeforeNormalising) {
  KILN_SKIP_WITHOUT_GPU();
  // bf16: the stored sum is rounded to bf16 and the normalised value is computed from the rounded
  // sum, exactly as the composed add then layer_norm does.
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({8, 256}, DType::kBF16, gen), r = rand_cpu({8, 256}, DType::kBF16, gen);
  Tensor w = rand_cpu({256}, DType::kBF16, gen), b = rand_cpu({256}, DType::kBF16, gen);
  auto [sum, y] = add_layer_norm(x.to(Device::cuda(0)), r.to(Device::cuda(0)),
                                 w.to(Device::cuda(0)), b.to(Device::cuda(0)));
  Tensor want_sum = add(x, r);
  EXPECT_TRUE(testing::bit_equal(sum.to(Device::cpu()), want_sum));
  testing::expect_gpu_close(y, layer_norm(want_sum, w, b), "y from the rounded sum");
}

}  // namespace
}  // namespace kiln
