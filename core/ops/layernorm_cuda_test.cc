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

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/layernorm.h"
#include "core/ops/rmsnorm.h"
#include "core/testing/gpu_test_util.h"

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

// A norm's weight and bias gradients go straight into their f32 .grads (KILN_NORM_DIRECT_GRAD,
// default) where the parameters are f32 masters used through their bf16 casts, as in a model:
// layer_norm, add_layer_norm, layer_norm_with_skip, rms_norm, add_rms_norm, rms_norm_with_skip
// (each node's own parameter edges), rows of 768 (warp per row), 2048 (warp group) and 2056 (block
// per row); added to a current .grad, written over a stale one (NaNs never read). Against the f64
// gradients of the same bf16-rounded inputs; the fused residual ops normalise the bf16-rounded sum,
// which the f64 reference does not round: hence 2e-2 of the largest gradient, far below what a
// dropped or doubled gradient or a read NaN gives.
TEST(NormCuda, ParameterGradientsGoStraightIntoTheF32Grads) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const Device gpu = Device::cuda(0);
  // op(x, r, w, b) -> the output the gradient flows into (b undefined for the RMS norms).
  using Op = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&)>;
  const std::vector<std::pair<const char*, Op>> ops = {
      {"layer_norm", [](auto& x, auto&, auto& w, auto& b) { return layer_norm(x, w, b); }},
      {"add_layer_norm",
       [](auto& x, auto& r, auto& w, auto& b) { return add_layer_norm(x, r, w, b).second; }},
      {"layer_norm_with_skip",
       [](auto& x, auto&, auto& w, auto& b) { return layer_norm_with_skip(x, w, b).second; }},
      {"rms_norm", [](auto& x, auto&, auto& w, auto&) { return rms_norm(x, w); }},
      {"add_rms_norm",
       [](auto& x, auto& r, auto& w, auto&) { return add_rms_norm(x, r, w).second; }},
      {"rms_norm_with_skip",
       [](auto& x, auto&, auto& w, auto&) { return rms_norm_with_skip(x, w).second; }}};
  for (const Shape& s : {Shape{130, 768}, Shape{301, 2048}, Shape{9, 2056}}) {
    const int64_t c = s.back();
    const Tensor x0 = rand_cpu(s, DType::kBF16, gen), r0 = rand_cpu(s, DType::kBF16, gen);
    const Tensor gy0 = rand_cpu(s, DType::kBF16, gen);
    const Tensor w0 = rand_cpu({c}, DType::kF32, gen), b0 = rand_cpu({c}, DType::kF32, gen);
    for (const auto& [name, op] : ops) {
      const bool rms = std::string(name).find("rms") != std::string::npos;
      const std::string what = std::string(name) + " " + shape_str(s);
      Tensor wr = w0.to(DType::kBF16).to(DType::kF64).set_requires_grad(true);
      Tensor br = b0.to(DType::kBF16).to(DType::kF64).set_requires_grad(true);
      const Tensor xr = x0.to(DType::kF64), rr = r0.to(DType::kF64);
      const Tensor in = std::string(name).rfind("add_", 0) == 0 ? add(xr, rr) : xr;
      const Tensor yr = rms ? rms_norm(in, wr) : layer_norm(in, wr, br);
      std::vector<Tensor> refs = kiln::grad(
          {yr}, {gy0.to(DType::kF64)}, rms ? std::vector<Tensor>{wr} : std::vector<Tensor>{wr, br});
      for (int stale = 0; stale <= 1; ++stale) {
        Tensor w = w0.to(gpu).set_requires_grad(true), b = b0.to(gpu).set_requires_grad(true);
        std::vector<Tensor> g0s;
        std::vector<Tensor*> params = {&w};
        if (!rms) params.push_back(&b);
        for (size_t i = 0; i < params.size(); ++i) {
          g0s.push_back(scale(rand_cpu({c}, DType::kF32, gen), testing::max_abs(refs[i])));
          testing::set_grad_or_stale(*params[i], g0s[i], stale != 0);
        }
        op(x0.to(gpu), r0.to(gpu), w.to(DType::kBF16), rms ? Tensor() : b.to(DType::kBF16))
            .backward(gy0.to(gpu));
        for (size_t i = 0; i < params.size(); ++i) {
          const std::string pw = what + (i == 0 ? " weight" : " bias") + (stale ? ", stale" : "");
          EXPECT_FALSE(params[i]->grad_stale()) << pw;
          const Tensor got = params[i]->grad().to(Device::cpu()).to(DType::kF64);
          EXPECT_EQ(testing::count_non_finite(got), 0) << pw << ": an old value read";
          const Tensor want = stale ? refs[i] : add(g0s[i].to(DType::kF64), refs[i]);
          EXPECT_LT(testing::max_abs(sub(got, want)) / testing::max_abs(refs[i]), 2e-2) << pw;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kiln
