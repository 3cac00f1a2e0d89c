// GPU-vs-CPU tests of the optimizers and gradient utilities (label gpu; skip without a GPU): the
// fused multi-tensor AdamW against the CPU AdamW over several steps (launches split by the tensor
// and block limits), SGD, grad_norm / clip / scale_grads / grads_non_finite, bit-identical repeats
// of the norm, no cudaMalloc in the optimizer's steady state, AdamW's 16-bit parameter copies, and
// its grouped step on the side stream (KILN_OVERLAP_OPTIM).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "core/cuda/runtime.h"
#include "core/testing/gpu_test_util.h"
#include "optim/optimizer.h"
#include "optim/optimizer_cuda.h"

namespace kiln::optim {
namespace {

using testing::GpuTest;
using testing::random_tensor;

using OptimCuda = GpuTest;

// Parameter sizes: 52 tensors (more than the 48 a launch takes), one of them longer than 320
// chunks of 64Ki elements (more blocks than a launch took before 2026-12-06), odd sizes to
// exercise chunk tails.
std::vector<int64_t> param_sizes() {
  std::vector<int64_t> s = {1, 7, 768, 65535, 65536, 65537, 3 * 65536 + 11, 21000001};
  for (int i = 0; i < 44; ++i) s.push_back(97 * i + 5);
  return s;
}

struct ParamPair {
  std::vector<nn::Parameter> cpu, gpu;
};

ParamPair make_params(uint64_t seed) {
  ParamPair pp;
  const auto sizes = param_sizes();
  for (size_t i = 0; i < sizes.size(); ++i) {
    Tensor c = random_tensor({sizes[i]}, seed + i);
    Tensor g = c.to(Device::cuda(0)).detach();
    c.set_requires_grad(true);
    g.set_requires_grad(true);
    const std::string name = "p" + std::to_string(i);
    const bool decay = i % 2 == 0;
    pp.cpu.push_back({name, c, decay});
    pp.gpu.push_back({name, g, decay});
  }
  return pp;
}

// Gives both copies the same fresh random gradient (in grad_dtype on the GPU; the CPU copy holds
// the same values in f32). Parameter `skip` gets no gradient (no update that step).
void set_grads(ParamPair& pp, uint64_t seed, DType grad_dtype, int skip = -1) {
  for (size_t i = 0; i < pp.cpu.size(); ++i) {
    if (static_cast<int>(i) == skip) {
      pp.cpu[i].tensor.zero_grad();
      pp.gpu[i].tensor.zero_grad();
      continue;
    }
    Tensor g =
        random_tensor(pp.cpu[i].tensor.shape(), seed * 1000 + i, grad_dtype, Device::cpu(), 0.01);
    pp.gpu[i].tensor.set_grad(g.to(Device::cuda(0)).detach());
    pp.cpu[i].tensor.set_grad(g.to(DType::kF32).detach());
  }
}

// The GPU kernel mirrors adamw_update operation by operation with one rounding each (no FMA
// contraction), so parameters and moments are expected to be bit-identical; 1e-6 relative leaves
// room only for a differently compiled CPU reference, far below any real bug.
void expect_same_state(const std::vector<nn::Parameter>& cpu, const std::vector<nn::Parameter>& gpu,
                       Optimizer& oc, Optimizer& og) {
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double scale = testing::mean_abs(cpu[i].tensor);
    KILN_EXPECT_CLOSE(gpu[i].tensor, cpu[i].tensor, 1e-6, 1e-7 * scale + 1e-30);
  }
  auto sc = oc.state(), sg = og.state();
  ASSERT_EQ(sc.size(), sg.size());
  for (size_t i = 0; i < sc.size(); ++i) {
    const double scale = testing::mean_abs(sc[i].second);
    KILN_EXPECT_CLOSE(sg[i].second, sc[i].second, 1e-6, 1e-7 * scale + 1e-30);
  }
}

// Both GPU runs hold the same parameters and optimizer state, bit for bit.
void expect_same_bits(const ParamPair& a, const ParamPair& b, Optimizer& oa, Optimizer& ob) {
  for (size_t i = 0; i < a.gpu.size(); ++i)
    EXPECT_TRUE(
        testing::same_bits(a.gpu[i].tensor.to(Device::cpu()), b.gpu[i].tensor.to(Device::cpu())))
        << a.gpu[i].name;
  auto sa = oa.state(), sb = ob.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i)
    EXPECT_TRUE(testing::same_bits(sa[i].second.to(Device::cpu()), sb[i].second.to(Device::cpu())))
        << sa[i].first;
}

TEST_F(OptimCuda, AdamWMatchesCpuOverSteps) {
  for (DType gd : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(gd));
    ParamPair pp = make_params(11);
    AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
    AdamW cpu(pp.cpu, o), gpu(pp.gpu, o);
    for (int step = 1; step <= 4; ++step) {
      set_grads(pp, step, gd, /*skip=*/step == 3 ? 5 : -1);
      cpu.step(1e-3 * step);
      gpu.step(1e-3 * step);
    }
    expect_same_state(pp.cpu, pp.gpu, cpu, gpu);
  }
}

// The clipping / unscale factor folded into the AdamW kernel (step_scaled) against scaling the
// gradients first (scale_grads, as the Trainer did before the fold) then step: parameters and
// moments bit for bit, f32 gradients (folded in the kernel) and bf16 ones (scaled in place first),
// over the 52 tensors and several launches; the f32 gradients in memory are left unscaled.
TEST_F(OptimCuda, FoldedGradScaleIsBitIdenticalToScalingFirst) {
  for (DType gd : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(gd));
    ParamPair a = make_params(21), b = make_params(21);
    AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
    AdamW first(a.gpu, o), folded(b.gpu, o);
    for (int step = 1; step <= 3; ++step) {
      set_grads(a, step, gd);
      set_grads(b, step, gd);
      const double s = 0.37 / step;
      scale_grads(a.gpu, s);
      first.step(2e-3);
      Tensor g0 = b.gpu[2].tensor.grad().to(Device::cpu());
      folded.step_scaled(2e-3, s);
      if (gd == DType::kF32)
        EXPECT_TRUE(testing::same_bits(b.gpu[2].tensor.grad().to(Device::cpu()), g0));
    }
    expect_same_bits(a, b, first, folded);
  }
}

// KILN_ADAMW_VEC's kernel (four elements a thread, 16-byte accesses) against the one-element
// kernel: parameters and moments bit for bit over three steps with a folded gradient factor, for
// f32, bf16 and f16 gradients, over the 52 tensors' chunk tails and launch splits, plus one
// parameter 4 bytes off 16-byte alignment (that tensor takes the one-element loop).
TEST_F(OptimCuda, VectorizedAdamWIsBitIdenticalToOneElementAThread) {
  struct Reset {
    ~Reset() { cuda::set_adamw_vectorized_override(-1); }
  } reset;
  for (DType gd : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(gd));
    ParamPair a = make_params(31), b = make_params(31);
    for (ParamPair* pp : {&a, &b}) {  // the misaligned one: elements 1..4097 of a buffer
      Tensor buf = random_tensor({4098}, 99).to(Device::cuda(0));
      Tensor p = buf.narrow(0, 1, 4097).detach();
      p.set_requires_grad(true);
      pp->gpu.push_back({"misaligned", p, true});
      pp->cpu.push_back({"misaligned", random_tensor({4097}, 99), true});
    }
    AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
    AdamW one(a.gpu, o), vec(b.gpu, o);
    for (int step = 1; step <= 3; ++step) {
      set_grads(a, step, gd);
      set_grads(b, step, gd);
      cuda::set_adamw_vectorized_override(0);
      one.step_scaled(2e-3, 0.5 / step);
      cuda::set_adamw_vectorized_override(1);
      vec.step_scaled(2e-3, 0.5 / step);
    }
    expect_same_bits(a, b, one, vec);
  }
}

// One 16-bit copy per parameter of `params` in dtype, fresh (uninitialised) buffers; the copy of
// parameter `misaligned` starts 2 bytes off 8-byte alignment (elements 1.. of its buffer).
std::vector<Tensor> make_copies(const std::vector<nn::Parameter>& params, DType dtype,
                                size_t misaligned) {
  std::vector<Tensor> h;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t n = params[i].tensor.numel();
    h.push_back(i == misaligned ? Tensor::empty({n + 1}, dtype, Device::cuda(0)).narrow(0, 1, n)
                                : Tensor::empty({n}, dtype, Device::cuda(0)));
  }
  return h;
}

// Launches cut by a block cap (a tensor's chunks continued in the next launch, from slot 0 with a
// chunk offset) against uncapped launches (one per 48 tensors): AdamW's parameters, moments and
// 16-bit copies, the gradient norm and the scaled gradients bit for bit. Caps of 1 (every chunk
// its own launch), 3 (cuts inside tensors and across tensor ends) and 320 (the launches of before
// 2026-12-06).
TEST_F(OptimCuda, LaunchBlockCapGivesTheSameBits) {
  struct Reset {
    ~Reset() { cuda::set_launch_block_cap_override(-1); }
  } reset;
  for (int64_t cap : {1, 3, 320}) {
    SCOPED_TRACE("cap " + std::to_string(cap));
    ParamPair a = make_params(51), b = make_params(51);
    AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
    AdamW whole(a.gpu, o), cut(b.gpu, o);
    std::vector<Tensor> ha = make_copies(a.gpu, DType::kBF16, 3);
    std::vector<Tensor> hb = make_copies(b.gpu, DType::kBF16, 3);
    ASSERT_TRUE(whole.set_param_copies(ha));
    ASSERT_TRUE(cut.set_param_copies(hb));
    for (int step = 1; step <= 2; ++step) {
      set_grads(a, step, DType::kF32);
      set_grads(b, step, DType::kF32);
      cuda::set_launch_block_cap_override(0);
      const double na = grad_norm(a.gpu);
      scale_grads(a.gpu, 0.75);
      whole.step(2e-3);
      cuda::set_launch_block_cap_override(cap);
      const double nb = grad_norm(b.gpu);
      scale_grads(b.gpu, 0.75);
      cut.step(2e-3);
      EXPECT_EQ(std::memcmp(&na, &nb, sizeof(double)), 0) << na << " vs " << nb;
      EXPECT_GT(na, 0.0);
      for (size_t i = 0; i < a.gpu.size(); ++i)
        EXPECT_TRUE(testing::same_bits(a.gpu[i].tensor.grad().to(Device::cpu()),
                                       b.gpu[i].tensor.grad().to(Device::cpu())))
            << "scaled gradient " << i;
    }
    expect_same_bits(a, b, whole, cut);
    for (size_t i = 0; i < ha.size(); ++i)
      EXPECT_TRUE(testing::same_bits(ha[i].to(Device::cpu()), hb[i].to(Device::cpu())))
          << "copy " << i;
  }
}

// AdamW writing the 16-bit copies of the updated parameters in its kernel (AdamWSlot::h, the
// fused parameter cast of KILN_FUSED_PARAM_CAST): parameters and moments bit for bit as a run
// without copies, and after every step each copy bit for bit the ordinary cast of its parameter;
// both kernels, bf16 and f16 copies, a parameter 4 bytes off 16-byte alignment and a copy 2 bytes
// off 8 (both take the one-element loop), and a parameter without a gradient in step 2 (not
// updated: its copy from step 1 stays right, and the step reports that it did not write it).
TEST_F(OptimCuda, AdamWWritesCopiesBitIdenticalToTheCast) {
  struct Reset {
    ~Reset() { cuda::set_adamw_vectorized_override(-1); }
  } reset;
  for (int vectorized : {0, 1}) {
    for (DType hd : {DType::kBF16, DType::kF16}) {
      SCOPED_TRACE(std::string(dtype_name(hd)) + (vectorized ? " vectorized" : " one element"));
      cuda::set_adamw_vectorized_override(vectorized);
      ParamPair a = make_params(41), b = make_params(41);
      for (ParamPair* pp : {&a, &b}) {  // the misaligned one: elements 1..4097 of a buffer
        Tensor p = random_tensor({4098}, 98).to(Device::cuda(0)).narrow(0, 1, 4097).detach();
        p.set_requires_grad(true);
        pp->gpu.push_back({"misaligned", p, true});
        pp->cpu.push_back({"misaligned", random_tensor({4097}, 98), true});
      }
      const std::vector<Tensor> h = make_copies(b.gpu, hd, /*misaligned=*/2);
      ASSERT_NE(reinterpret_cast<uintptr_t>(h[2].raw()) % 8, 0u);
      AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
      AdamW plain(a.gpu, o), fused(b.gpu, o);
      ASSERT_TRUE(fused.set_param_copies(h));
      for (int step = 1; step <= 3; ++step) {
        const int skip = step == 2 ? 3 : -1;
        set_grads(a, step, DType::kBF16, skip);
        set_grads(b, step, DType::kBF16, skip);
        plain.step_scaled(2e-3, 0.5 / step);
        fused.step_scaled(2e-3, 0.5 / step);
        EXPECT_EQ(fused.last_step_wrote_copies(), skip < 0) << "step " << step;
        for (size_t i = 0; i < h.size(); ++i)
          EXPECT_TRUE(testing::same_bits(h[i].to(Device::cpu()),
                                         raw::convert(b.gpu[i].tensor, hd).to(Device::cpu())))
              << "step " << step << ", " << b.gpu[i].name;
      }
      expect_same_bits(a, b, plain, fused);
    }
  }
}

// KILN_OVERLAP_OPTIM's grouped step (Optimizer::step_grouped): AdamW launched group by group on
// the side stream, behind a 2 ms spin so that it lands late, zeroing every gradient once read
// (steps 1 and 2; step 3 without zero_grads, as the trainer runs it now that it marks gradients
// stale instead): over three steps with a folded gradient factor, parameters, moments and bf16
// copies bit for bit as the step on the compute stream, every gradient +0 afterwards (all bytes
// 0) or, in step 3, left as it was; group_done called for 0 .. groups - 1 in order; a bf16
// gradient makes it decline, doing nothing.
TEST_F(OptimCuda, GroupedStepOnTheSideStreamIsBitIdenticalAndZeroesGradients) {
  ParamPair a = make_params(51), b = make_params(51);
  const std::vector<Tensor> ha = make_copies(a.gpu, DType::kBF16, 2);
  const std::vector<Tensor> hb = make_copies(b.gpu, DType::kBF16, 2);
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  AdamW plain(a.gpu, o), grouped(b.gpu, o);
  ASSERT_TRUE(plain.set_param_copies(ha));
  ASSERT_TRUE(grouped.set_param_copies(hb));
  const int groups = 5;
  std::vector<int> group;
  for (size_t i = 0; i < b.gpu.size(); ++i)
    group.push_back(static_cast<int>(i * groups / b.gpu.size()));
  const cudaStream_t side = kiln::cuda::side_stream(0);
  for (int step = 1; step <= 3; ++step) {
    set_grads(a, step, DType::kF32);
    set_grads(b, step, DType::kF32);
    plain.step_scaled(2e-3, 0.5 / step);
    kiln::cuda::stream_wait_compute(side);  // the gradients, as the trainer's begin_side_step
    kiln::cuda::delay_stream(side, 2000);
    std::vector<int> done;
    const bool zero = step < 3;
    ASSERT_TRUE(grouped.step_grouped(2e-3, 0.5 / step, group, groups, side, zero,
                                     [&done](int g) { done.push_back(g); }));
    kiln::cuda::compute_wait_stream(side);
    EXPECT_EQ(done, (std::vector<int>{0, 1, 2, 3, 4}));
    EXPECT_TRUE(grouped.last_step_wrote_copies());
    for (size_t i = 0; i < b.gpu.size(); ++i) {
      const Tensor g = b.gpu[i].tensor.grad().to(Device::cpu());
      const std::vector<char> zeros(g.nbytes(), 0);
      const Tensor kept = a.gpu[i].tensor.grad().to(Device::cpu());  // the plain step keeps them
      EXPECT_EQ(std::memcmp(g.raw(), zero ? zeros.data() : kept.raw(), g.nbytes()), 0)
          << "step " << step << " " << b.gpu[i].name;
    }
    for (size_t i = 0; i < ha.size(); ++i)
      EXPECT_TRUE(testing::same_bits(ha[i].to(Device::cpu()), hb[i].to(Device::cpu())))
          << "step " << step << ", copy of " << b.gpu[i].name;
  }
  expect_same_bits(a, b, plain, grouped);
  set_grads(b, 9, DType::kBF16);
  const int64_t t = grouped.steps();
  int called = 0;
  EXPECT_FALSE(
      grouped.step_grouped(2e-3, 1.0, group, groups, side, true, [&called](int) { ++called; }));
  EXPECT_EQ(called, 0);
  EXPECT_EQ(grouped.steps(), t);
}

TEST_F(OptimCuda, AdamWSteadyStateDoesNoCudaMalloc) {
  ParamPair pp = make_params(3);
  AdamW gpu(pp.gpu, AdamWOptions{});
  set_grads(pp, 1, DType::kBF16);
  auto iteration = [&] {
    gpu.step(1e-3);
    (void)grad_norm(pp.gpu);
    scale_grads(pp.gpu, 0.5);
    (void)grads_non_finite(pp.gpu);
  };
  iteration();  // warm-up: every temporary (f32 copies of bf16 grads, norm partials) now cached
  kiln::cuda::synchronize();
  const int64_t before = kiln::cuda::allocator_counters().device_mallocs;
  for (int i = 0; i < 3; ++i) iteration();
  kiln::cuda::synchronize();
  EXPECT_EQ(kiln::cuda::allocator_counters().device_mallocs, before);
}

TEST_F(OptimCuda, SgdMatchesCpu) {
  for (bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "heavy ball");
    ParamPair pp = make_params(5);
    SGD cpu(pp.cpu, 0.9, 0.01, nesterov), gpu(pp.gpu, 0.9, 0.01, nesterov);
    for (int step = 1; step <= 3; ++step) {
      set_grads(pp, 40 + step, DType::kF32);
      cpu.step(0.1);
      gpu.step(0.1);
    }
    expect_same_state(pp.cpu, pp.gpu, cpu, gpu);
  }
}

TEST_F(OptimCuda, GradNormMatchesCpuAndRepeatsBitIdentically) {
  for (DType gd : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(gd));
    ParamPair pp = make_params(7);
    set_grads(pp, 9, gd, /*skip=*/2);
    const double c = grad_norm(pp.cpu), g1 = grad_norm(pp.gpu), g2 = grad_norm(pp.gpu);
    // Both sum f64 squares of the same values, in different orders: f64 round-off only.
    EXPECT_NEAR(g1, c, 1e-12 * c);
    EXPECT_EQ(std::memcmp(&g1, &g2, sizeof(double)), 0) << g1 << " vs " << g2;
    EXPECT_GT(c, 0.0);
  }
}

TEST_F(OptimCuda, ScaleAndClipMatchCpu) {
  for (DType gd : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(gd));
    ParamPair pp = make_params(13);
    set_grads(pp, 21, gd);
    // Give the CPU copy the GPU's dtype so both round the scaled values the same way.
    for (size_t i = 0; i < pp.cpu.size(); ++i)
      pp.cpu[i].tensor.set_grad(pp.gpu[i].tensor.grad().to(Device::cpu()).detach());
    scale_grads(pp.cpu, 0.37);
    scale_grads(pp.gpu, 0.37);
    const double nc = clip_grad_norm(pp.cpu, 1e-3), ng = clip_grad_norm(pp.gpu, 1e-3);
    EXPECT_NEAR(ng, nc, 1e-12 * nc);
    for (size_t i = 0; i < pp.cpu.size(); ++i) {
      // mul_ rounds exactly as on the CPU; the clip factor derives from norms equal to ~1e-16.
      const double scale = testing::mean_abs(pp.cpu[i].tensor.grad());
      KILN_EXPECT_CLOSE(pp.gpu[i].tensor.grad(), pp.cpu[i].tensor.grad(), 1e-6,
                        1e-7 * scale + 1e-30);
    }
  }
}

TEST_F(OptimCuda, GradsNonFiniteFindsInfAndNan) {
  ParamPair pp = make_params(17);
  set_grads(pp, 23, DType::kBF16);
  EXPECT_FALSE(grads_non_finite(pp.gpu));
  for (double bad :
       {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
        std::numeric_limits<double>::quiet_NaN()}) {
    SCOPED_TRACE(bad);
    Tensor g = pp.gpu[7].tensor.grad();  // 21M elements: the bad value sits deep in the tensor
    Tensor saved = g.clone();
    g.narrow(0, 12345678, 1).fill_(bad);
    EXPECT_TRUE(grads_non_finite(pp.gpu));
    g.copy_(saved);
    EXPECT_FALSE(grads_non_finite(pp.gpu));
  }
}

}  // namespace
}  // namespace kiln::optim
