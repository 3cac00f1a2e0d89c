// CUDA matmul / linear / linear_gelu / mlp_gelu / linear_fp8 against the CPU reference (label gpu;
// skip without a GPU), on fresh random inputs with every CUDA allocation poisoned (NaN) so any
// output element cuBLASLt or a fallback leaves unwritten fails the comparison.
//
// Tolerances. f32/f64 results are compared with the exact product (the CPU op on f64 copies of
// the same inputs). cuBLASLt and the reference add the K products in different orders; the
// rounding error of an f32 dot product grows like sqrt(K) * 2^-24 * (its terms' magnitude), a
// random walk, so the absolute term is K-dependent: atol = 1e-5 * sqrt(K / 64) * rms(reference)
// on top of rtol = 1e-5 (at K = 1024 that is 4e-5 of the rms, while a single wrong product term
// is ~1/sqrt(K) = 3% of it). TF32 stays off (CUBLAS_COMPUTE_32F). bf16/f16 results are compared
// with the CPU op on the same bf16/f16 inputs (f32 accumulation): within 1e-2 (bf16) / 2e-3 (f16)
// relative plus the same fraction of the tensor's largest magnitude (times the sqrt(K / 64) growth)
// for entries that cancel. The scale is max|ref|, not rms(ref), for 16-bit outputs: the fused
// GELU paths round once where the composed CPU reference rounds the GEMM output and the GELU
// output separately (and recomputes GELU from the rounded pre-activation in backward), so single
// entries differ by 2-3 bf16 ulps (measured on an H200: 2 ulps at 2.0 in linear_gelu, 0.25 on a
// cancelling entry of ~2 in mlp_gelu's dW2), i.e. a fraction of the largest entry, not of the rms.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "core/autograd.h"
#include "core/cuda/gemm.h"
#include "core/ops/activation.h"
#include "core/ops/cuda_base_ops.h"
#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using MatmulCuda = GpuTest;

const Device kGpu = Device::cuda(0);

Tensor to_gpu(const Tensor& t) { return t.to(kGpu).detach(); }
Tensor f64(const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64).detach(); }

double rms(const Tensor& t) {
  double s = 0;
  const std::vector<double> v = t.to_vector();
  for (double d : v) s += d * d;
  return v.empty() ? 0.0 : std::sqrt(s / static_cast<double>(v.size()));
}

// NaN if any element is NaN: a read of a poisoned or stale value fails a bound.
using testing::max_abs;

double rtol_for(DType dt) {
  switch (dt) {
    case DType::kBF16:
      return 1e-2;
    case DType::kF16:
      return 2e-3;
    case DType::kF64:
      return 1e-12;
    default:
      return 1e-5;
  }
}

// got (GPU) against ref (CPU), with the K-dependent absolute term described at the top.
void expect_gemm_close(const Tensor& got, const Tensor& ref, int64_t k, DType dt,
                       const std::string& what) {
  SCOPED_TRACE(what);
  const double rtol = rtol_for(dt);
  const bool low = dt == DType::kBF16 || dt == DType::kF16;
  const double scale = low ? max_abs(ref) : rms(ref);
  const double atol = rtol * std::sqrt(std::max<double>(1.0, k / 64.0)) * scale + 1e-30;
  KILN_EXPECT_CLOSE(got, ref, rtol, atol);
}

// The reference: f32/f64 inputs -> the exact product from f64 copies; bf16/f16 inputs -> the CPU
// op on the same low-precision values.
Tensor reference_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  const DType dt = a.dtype();
  if (dt == DType::kF32 || dt == DType::kF64) return matmul(f64(a), f64(b), ta, tb);
  return matmul(a, b, ta, tb);
}

struct MmCase {
  Shape a, b;
  bool ta, tb;
};

const MmCase kCases[] = {
    {{67, 129}, {129, 45}, false, false},            // odd sizes
    {{129, 67}, {129, 45}, true, false},             // trans_a
    {{67, 129}, {45, 129}, false, true},             // trans_b
    {{129, 67}, {45, 129}, true, true},              // both
    {{256, 1024}, {1024, 384}, false, false},        // K = 1024
    {{3, 5, 40, 24}, {3, 5, 24, 36}, false, false},  // batched
    {{3, 5, 24, 40}, {3, 5, 36, 24}, true, true},    // batched, both transposed
    {{4, 40, 24}, {24, 36}, false, false},           // b shared: batch folded into M
    {{4, 24, 40}, {24, 36}, true, false},            // b shared, trans_a: one GEMM per batch
    {{1, 1}, {1, 1}, false, false},                  // tiny
    {{5, 0}, {0, 7}, false, false},                  // K = 0: zeros
};

TEST_F(MatmulCuda, MatchesCpuForEveryDtypeLayoutAndBatch) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const MmCase& c : kCases) {
      const std::string what = std::string(dtype_name(dt)) + " " + shape_str(c.a) +
                               (c.ta ? "^T" : "") + " @ " + shape_str(c.b) + (c.tb ? "^T" : "");
      Tensor a = random_tensor(c.a, 1, dt), b = random_tensor(c.b, 2, dt);
      Tensor g = matmul(to_gpu(a), to_gpu(b), c.ta, c.tb);
      EXPECT_EQ(g.dtype(), dt);
      const int64_t k = c.ta ? c.a[c.a.size() - 2] : c.a.back();
      expect_gemm_close(g, reference_matmul(a, b, c.ta, c.tb).to(dt), k, dt, what);
    }
  }
}

TEST_F(MatmulCuda, TransposedViewsUseLayoutFlags) {
  // a and b given as transposed / narrowed views: the result must equal the contiguous case.
  Tensor a = random_tensor({96, 130}, 3), b = random_tensor({70, 96}, 4);
  Tensor ga = to_gpu(a), gb = to_gpu(b);
  Tensor ref = reference_matmul(a.transpose(0, 1), b.transpose(0, 1), false, false);  // (130, 70)
  expect_gemm_close(matmul(ga.transpose(0, 1), gb.transpose(0, 1)), ref, 96, DType::kF32, "views");
  expect_gemm_close(matmul(ga, gb, true, true), ref, 96, DType::kF32, "flags");
  // A batch of column slices (non-contiguous rows, uniform batch stride).
  Tensor x = random_tensor({4, 30, 50}, 5), w = random_tensor({4, 20, 30}, 6);
  Tensor xs = x.narrow(2, 10, 20), gxs = to_gpu(x).narrow(2, 10, 20);  // (4, 30, 20)
  expect_gemm_close(matmul(to_gpu(w), gxs), reference_matmul(w, xs, false, false), 30, DType::kF32,
                    "narrowed batch");
  // A permuted batch (no single batch stride): copied, still right.
  Tensor p = random_tensor({6, 5, 8, 9}, 7), q = random_tensor({5, 6, 9, 4}, 8);
  Tensor pp = p.permute({1, 0, 2, 3});  // (5, 6, 8, 9)
  expect_gemm_close(matmul(to_gpu(p).permute({1, 0, 2, 3}), to_gpu(q)),
                    reference_matmul(pp.contiguous(), q, false, false), 9, DType::kF32,
                    "permuted batch");
}

TEST_F(MatmulCuda, RepeatsAreBitIdenticalAndReusePlans) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Tensor a = to_gpu(random_tensor({512, 768}, 9, dt));
    Tensor b = to_gpu(random_tensor({2304, 768}, 10, dt));
    Tensor y1 = matmul(a, b, false, true);
    const int64_t plans = cuda::gemm_plan_count();
    Tensor y2 = matmul(a, b, false, true);
    EXPECT_EQ(cuda::gemm_plan_count(), plans);
    EXPECT_TRUE(same_bits(y1, y2)) << dtype_name(dt);
  }
}

TEST_F(MatmulCuda, LargeGemmsPickedByTimingStayRight) {
  // 1024^3 multiply-adds in bf16: at the tuning threshold, so the plan's algorithm is the fastest
  // of the heuristic's top 8 on this GPU; the result must still match the CPU and repeat exactly.
  for (const bool gelu : {false, true}) {
    SCOPED_TRACE(gelu ? "GELU epilogue" : "plain");
    const int64_t n = gelu ? 1032 : 1024;
    Tensor a = random_tensor({1024, 1024}, gelu ? 31 : 21, DType::kBF16);
    Tensor b = random_tensor({n, 1024}, gelu ? 32 : 22, DType::kBF16, Device::cpu(), 0.05);
    Tensor bias = random_tensor({n}, 23, DType::kBF16);
    auto run = [&] {
      return gelu ? linear_gelu(to_gpu(a), to_gpu(b), to_gpu(bias))
                  : matmul(to_gpu(a), to_gpu(b), false, true);
    };
    const int64_t tuned = cuda::gemm_tuned_plan_count();
    const Tensor y = run();
    if (!cuda::deterministic() && std::getenv("KILN_GEMM_TUNE") == nullptr)
      EXPECT_EQ(cuda::gemm_tuned_plan_count(), tuned + 1);
    const Tensor ref = gelu ? linear_gelu(a, b, bias) : reference_matmul(a, b, false, true);
    expect_gemm_close(y, ref, 1024, DType::kBF16, "tuned");
    EXPECT_TRUE(same_bits(y, run()));
  }
}

// An f32 GPU parameter (seeded, scale 0.05) whose .grad holds random values (seed + 100), or NaNs
// marked stale (Tensor::mark_grad_stale).
Tensor wgrad_param(const Shape& s, uint64_t seed, bool stale) {
  Tensor p = to_gpu(random_tensor(s, seed, DType::kF32, Device::cpu(), 0.05));
  p.set_requires_grad(true);
  testing::set_grad_or_stale(p, random_tensor(s, seed + 100, DType::kF32), stale);
  return p;
}

// The weight gradients of the CUDA linear and fused-MLP nodes go straight into an f32 parameter's
// defined .grad (autograd's accumulation_target; GEMM with beta = 1), through the bf16 cast, as
// under DataParallel: .grad = G0 + gy^T x with the f32 accumulator unrounded. A bf16-rounded dW
// (the path without it) would be ~2e-3 off relative; the bound 2e-4 tells the two apart. The
// hooks fire once per backward, and a second backward adds again. (KILN_DIRECT_WGRAD=0 turns the
// direct path off; this test then fails by design.)
TEST_F(MatmulCuda, WeightGradientsAddIntoTheF32GradUnrounded) {
  const int64_t rows = 256, in = 192, hid = 320, out = 128;
  Tensor x = to_gpu(random_tensor({rows, in}, 41, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, out}, 42, DType::kBF16));
  auto param = [](Shape s, uint64_t seed) { return wgrad_param(s, seed, /*stale=*/false); };
  Tensor w1 = param({hid, in}, 43), w2 = param({out, hid}, 44), w = param({out, in}, 45);
  int hooks = 0;
  for (Tensor* t : {&w1, &w2, &w}) t->register_grad_ready_hook([&](Tensor&) { ++hooks; });
  const Tensor g1 = f64(w1.grad()), g2 = f64(w2.grad()), g0 = f64(w.grad());
  // Reference products in f64 from the same bf16 operands.
  Tensor xb = f64(x), gyb = f64(gy);
  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE("backward " + std::to_string(pass));
    Tensor y = linear(x, w.to(DType::kBF16));
    y.backward(gy);
    Tensor ref = add(g0, scale(matmul(gyb, xb, true, false), pass));
    const double err = max_abs(sub(f64(w.grad()), ref)) / max_abs(ref);
    EXPECT_LT(err, 2e-4) << "linear: dW not added unrounded into .grad";
    // The fused MLP: w2's dW = gy^T h with h the same bf16 GELU output (linear_gelu runs the same
    // kernel), so it is checked as tightly; w1's dW goes through the bf16 GELU gradient, so it is
    // checked against the f64 chain only loosely (bf16 rounding of dpre).
    Tensor w1b = w1.to(DType::kBF16), w2b = w2.to(DType::kBF16);
    mlp_gelu(x, w1b, Tensor(), w2b, Tensor()).backward(gy);
    Tensor h;
    {
      NoGradGuard ng;
      h = f64(linear_gelu(x, w1b.detach()));
    }
    Tensor ref2 = add(g2, scale(matmul(gyb, h, true, false), pass));
    EXPECT_LT(max_abs(sub(f64(w2.grad()), ref2)) / max_abs(ref2), 2e-4) << "mlp w2";
    Tensor pre = matmul(xb, f64(w1b), false, true).detach().set_requires_grad(true);
    const Tensor dgelu = grad({gelu(pre)}, {Tensor::full(pre.shape(), 1.0, DType::kF64)}, {pre})[0];
    Tensor dpre = mul(matmul(gyb, f64(w2b), false, false), dgelu);
    Tensor ref1 = add(g1, scale(matmul(dpre, xb, true, false), pass));
    EXPECT_LT(max_abs(sub(f64(w1.grad()), ref1)) / max_abs(ref1), 3e-2) << "mlp w1";
  }
  EXPECT_EQ(hooks, 6);
}

// The same nodes over a stale .grad (Tensor::mark_grad_stale, as DataParallel's lazy zero_grad
// leaves it) holding NaNs: the weight GEMMs claim it and write it over with beta = 0, never
// reading the old values (one NaN read would make the gradient NaN), and the second backward adds.
TEST_F(MatmulCuda, WeightGradientsWriteOverAStaleGrad) {
  const int64_t rows = 256, in = 192, hid = 320, out = 128;
  Tensor x = to_gpu(random_tensor({rows, in}, 51, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, out}, 52, DType::kBF16));
  auto param = [](Shape s, uint64_t seed) { return wgrad_param(s, seed, /*stale=*/true); };
  Tensor w1 = param({hid, in}, 53), w2 = param({out, hid}, 54), w = param({out, in}, 55);
  Tensor xb = f64(x), gyb = f64(gy);
  Tensor w1b = w1.to(DType::kBF16), w2b = w2.to(DType::kBF16);
  Tensor h;
  {
    NoGradGuard ng;
    h = f64(linear_gelu(x, w1b.detach()));
  }
  for (int pass = 1; pass <= 2; ++pass) {
    SCOPED_TRACE("backward " + std::to_string(pass));
    linear(x, w.to(DType::kBF16)).backward(gy);
    EXPECT_FALSE(w.grad_stale());
    Tensor ref = scale(matmul(gyb, xb, true, false), pass);
    EXPECT_LT(max_abs(sub(f64(w.grad()), ref)) / max_abs(ref), 2e-4) << "linear";
    mlp_gelu(x, w1b, Tensor(), w2b, Tensor()).backward(gy);
    Tensor ref2 = scale(matmul(gyb, h, true, false), pass);
    EXPECT_LT(max_abs(sub(f64(w2.grad()), ref2)) / max_abs(ref2), 2e-4) << "mlp w2";
    // w1 only for NaNs and scale: its dW goes through the bf16 GELU gradient.
    const double n1 = max_abs(f64(w1.grad()));
    EXPECT_TRUE(std::isfinite(n1)) << "mlp w1";
    EXPECT_GT(n1, 0.0) << "mlp w1";
  }
}

// Bias gradients go straight into an f32 bias's .grad as well (KILN_BIAS_DIRECT_GRAD, default:
// the column sums of gy added into it, or written over a stale one holding NaNs): the linear node
// (plain and with the GELU epilogue) and the fused MLP's second bias. Two backwards: written, then
// added. Against the f64 column sums of the same bf16 gy (the GELU path's gy goes through the bf16
// GELU gradient, so only its NaNs and scale are checked). 1e-5: the sums are f64 rounded once to
// f32; a bias gradient rounded to bf16 on the way (the path without it) is ~4e-3 off.
TEST_F(MatmulCuda, BiasGradientsGoStraightIntoTheF32Grad) {
  const int64_t rows = 300, in = 96, hid = 160, out = 64;
  Tensor x = to_gpu(random_tensor({rows, in}, 61, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, out}, 62, DType::kBF16));
  const Tensor sums = sum_to(f64(gy), {out});
  // max_abs skips NaNs (std::max keeps its first argument), so a read NaN is checked for apart.
  auto finite = [](const Tensor& t) { return testing::count_non_finite(t) == 0; };
  for (int stale = 0; stale <= 1; ++stale) {
    SCOPED_TRACE(stale ? "stale .grad" : "current .grad");
    auto param = [stale](Shape s, uint64_t seed) { return wgrad_param(s, seed, stale != 0); };
    Tensor w = param({out, in}, 63), b = param({out}, 64), w1 = param({hid, in}, 65);
    Tensor b1 = param({hid}, 66), w2 = param({out, hid}, 67), b2 = param({out}, 68);
    Tensor bg = param({out}, 69), wg = param({out, in}, 70);
    const Tensor g0 = stale ? Tensor::zeros({out}, DType::kF64) : f64(b.grad());
    const Tensor g02 = stale ? Tensor::zeros({out}, DType::kF64) : f64(b2.grad());
    for (int pass = 1; pass <= 2; ++pass) {
      SCOPED_TRACE("backward " + std::to_string(pass));
      linear(x, w.to(DType::kBF16), b.to(DType::kBF16)).backward(gy);
      EXPECT_FALSE(b.grad_stale());
      const Tensor ref = add(g0, scale(sums, pass));
      EXPECT_TRUE(finite(b.grad())) << "linear bias: an old value read";
      EXPECT_LT(max_abs(sub(f64(b.grad()), ref)) / max_abs(ref), 1e-5) << "linear bias";
      mlp_gelu(x, w1.to(DType::kBF16), b1.to(DType::kBF16), w2.to(DType::kBF16),
               b2.to(DType::kBF16))
          .backward(gy);
      const Tensor ref2 = add(g02, scale(sums, pass));
      EXPECT_TRUE(finite(b2.grad())) << "mlp b2: an old value read";
      EXPECT_LT(max_abs(sub(f64(b2.grad()), ref2)) / max_abs(ref2), 1e-5) << "mlp b2";
      linear_gelu(x, wg.to(DType::kBF16), bg.to(DType::kBF16)).backward(gy);
      const double nb = max_abs(f64(bg.grad()));
      EXPECT_TRUE(std::isfinite(nb) && nb > 0.0) << "linear_gelu bias";
    }
  }
}

TEST_F(MatmulCuda, MatmulGradientsMatchCpu) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor a = random_tensor({3, 40, 24}, 11, dt), b = random_tensor({3, 36, 24}, 12, dt);
    Tensor ga = to_gpu(a), gb = to_gpu(b);
    for (Tensor* t : {&a, &b, &ga, &gb}) t->set_requires_grad(true);
    Tensor gy = random_tensor({3, 40, 36}, 13, dt);
    matmul(a, b, false, true).backward(gy);
    matmul(ga, gb, false, true).backward(to_gpu(gy));
    // The CPU grads are computed in f32 (rounded to dt), compared with dt's tolerance; K = 36 / 40.
    expect_gemm_close(ga.grad(), a.grad(), 36, dt, "da");
    expect_gemm_close(gb.grad(), b.grad(), 40, dt, "db");
  }
}

struct LinearInputs {
  Tensor x, w, b, gy;  // CPU
};

LinearInputs linear_inputs(DType dt, int64_t in, int64_t out, uint64_t seed) {
  LinearInputs li;
  li.x = random_tensor({4, 24, in}, seed, dt);
  li.w = random_tensor({out, in}, seed + 1, dt, Device::cpu(), 1.0 / std::sqrt(in));
  li.b = random_tensor({out}, seed + 2, dt);
  li.gy = random_tensor({4, 24, out}, seed + 3, dt);
  return li;
}

// Runs f on CPU leaves and on GPU leaves (same values), backward with gy, and compares the output
// and every input gradient. k_of[i]: the reduction length behind output / gradient i.
template <typename F>
void check_fwd_bwd(F f, const std::vector<Tensor>& inputs, const Tensor& gy, DType dt,
                   const std::vector<int64_t>& k_of, const std::vector<bool>& needs_grad) {
  std::vector<Tensor> c, g;
  for (size_t i = 0; i < inputs.size(); ++i) {
    c.push_back(inputs[i].defined() ? inputs[i].detach() : Tensor());
    g.push_back(inputs[i].defined() ? to_gpu(inputs[i]) : Tensor());
    if (c[i].defined() && needs_grad[i]) {
      c[i].set_requires_grad(true);
      g[i].set_requires_grad(true);
    }
  }
  // f32: the CPU reference runs on f64 copies (exact); bf16: on the same bf16 values.
  std::vector<Tensor> r = c;
  if (dt == DType::kF32) {
    for (size_t i = 0; i < r.size(); ++i) {
      if (!r[i].defined()) continue;
      r[i] = f64(r[i]);
      if (needs_grad[i]) r[i].set_requires_grad(true);
    }
  }
  Tensor yr = f(r), yg = f(g);
  EXPECT_EQ(yg.device(), kGpu);
  expect_gemm_close(yg, yr.to(dt), k_of[0], dt, "output");
  yr.backward(dt == DType::kF32 ? f64(gy) : gy);
  yg.backward(to_gpu(gy));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined() || !needs_grad[i]) continue;
    ASSERT_TRUE(g[i].grad().defined()) << "input " << i;
    expect_gemm_close(g[i].grad(), r[i].grad().to(dt), k_of[i + 1], dt,
                      "grad of input " + std::to_string(i));
  }
}

TEST_F(MatmulCuda, LinearForwardAndBackwardWithFusedBias) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    LinearInputs li = linear_inputs(dt, 96, 136, 20);
    auto f = [](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); };
    // k: output over IN; dx over OUT; dw over rows (4 * 24); db over rows.
    check_fwd_bwd(f, {li.x, li.w, li.b}, li.gy, dt, {96, 136, 96, 96}, {true, true, true});
    // No bias; and a bias-only gradient (weights frozen).
    auto f2 = [](const std::vector<Tensor>& t) { return linear(t[0], t[1]); };
    check_fwd_bwd(f2, {li.x, li.w}, li.gy, dt, {96, 136, 96}, {true, true});
    check_fwd_bwd(f, {li.x, li.w, li.b}, li.gy, dt, {96, 136, 96, 96}, {false, false, true});
  }
}

TEST_F(MatmulCuda, LinearGeluMatchesComposedCpu) {
  // bf16 takes the GELU_AUX_BIAS epilogue forward; f32 the exact GELU kernel. OUT = 136 is a
  // multiple of 8 (the epilogue's requirement); OUT = 50 takes the unfused path in both dtypes.
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int64_t out : {136, 50}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " OUT=" + std::to_string(out));
      LinearInputs li = linear_inputs(dt, 64, out, 30);
      auto f = [](const std::vector<Tensor>& t) { return linear_gelu(t[0], t[1], t[2]); };
      check_fwd_bwd(f, {li.x, li.w, li.b}, li.gy, dt, {64, out, 96, 96}, {true, true, true});
    }
  }
}

TEST_F(MatmulCuda, MlpGeluMatchesComposedCpu) {
  // bf16: backward computes the hidden gradient by matmul_dgelu's default path (the DGELU
  // epilogue; HiddenGradientPathsMatchF64Reference covers each path); f32: unfused kiln kernels.
  // C = 64, H = 256.
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = random_tensor({4, 24, 64}, 40, dt);
    Tensor w1 = random_tensor({256, 64}, 41, dt, Device::cpu(), 0.125);
    Tensor b1 = random_tensor({256}, 42, dt);
    Tensor w2 = random_tensor({64, 256}, 43, dt, Device::cpu(), 0.0625);
    Tensor b2 = random_tensor({64}, 44, dt);
    Tensor gy = random_tensor({4, 24, 64}, 45, dt);
    auto f = [](const std::vector<Tensor>& t) { return mlp_gelu(t[0], t[1], t[2], t[3], t[4]); };
    // k: output over H (and C before it); dx over H; dw1, db1, dw2, db2 over the 96 rows.
    check_fwd_bwd(f, {x, w1, b1, w2, b2}, gy, dt, {256, 256, 96, 96, 96, 96},
                  {true, true, true, true, true});
    // Without biases, only some inputs needing grads.
    auto g = [](const std::vector<Tensor>& t) {
      return mlp_gelu(t[0], t[1], Tensor(), t[2], Tensor());
    };
    check_fwd_bwd(g, {x, w1, w2}, gy, dt, {256, 256, 96, 96}, {false, true, false});
  }
}

TEST_F(MatmulCuda, MlpGeluBackwardKernelOverManyRowChunksMatchesComposedCpu) {
  // The hidden gradient's GELU factor and b1's column sums through mlp_gelu (matmul_dgelu's
  // default path; the kiln kernel's 64 chunks of 33 rows are tested directly in
  // HiddenGradientPathsMatchF64Reference): 2100 rows, H = 264 = one full 256-column block and one
  // of 8.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = random_tensor({3, 700, 64}, 60, dt);
    Tensor w1 = random_tensor({264, 64}, 61, dt, Device::cpu(), 0.125);
    Tensor b1 = random_tensor({264}, 62, dt);
    Tensor w2 = random_tensor({64, 264}, 63, dt, Device::cpu(), 0.0625);
    Tensor b2 = random_tensor({64}, 64, dt);
    Tensor gy = random_tensor({3, 700, 64}, 65, dt);
    auto f = [](const std::vector<Tensor>& t) { return mlp_gelu(t[0], t[1], t[2], t[3], t[4]); };
    check_fwd_bwd(f, {x, w1, b1, w2, b2}, gy, dt, {264, 264, 2100, 2100, 2100, 2100},
                  {true, true, true, true, true});
  }
}

TEST_F(MatmulCuda, HiddenGradientPathsMatchF64Reference) {
  // matmul_dgelu by each path (the kiln kernel, cuBLASLt's DGELU epilogue + sum_to, its
  // DGELU_BGRAD epilogue): dpre = (gy @ w2) * gelu'(pre) and gb1 = its column sums, against the
  // f64 CPU gradient of gelu through autograd. 2100 rows, H = 264 (one full 256-column block and
  // one of 8), C = 64; bf16 and f16.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Tensor gy = random_tensor({2100, 64}, 70, dt);
    Tensor w2 = random_tensor({64, 264}, 71, dt, Device::cpu(), 0.125);
    Tensor pre = random_tensor({2100, 264}, 72, dt);
    Tensor pre64 = f64(pre).set_requires_grad(true);
    Tensor dpre_ref, gb1_ref;
    {
      EnableGradGuard eg;
      dpre_ref = kiln::grad({gelu(pre64)}, {matmul(f64(gy), f64(w2), false, false)}, {pre64})[0];
    }
    gb1_ref = sum_to(dpre_ref, {264});
    for (cuda::DGeluPath path :
         {cuda::DGeluPath::kKernel, cuda::DGeluPath::kEpilogue, cuda::DGeluPath::kEpilogueBGrad}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " path " + std::to_string(static_cast<int>(path)));
      Tensor gb1;
      Tensor dpre = cuda::matmul_dgelu(to_gpu(gy), to_gpu(w2), to_gpu(pre), &gb1, path);
      expect_gemm_close(dpre, dpre_ref.to(dt), 64, dt, "dpre");
      // gb1 sums 2100 rounded entries: the K-dependent term with K = the rows.
      expect_gemm_close(gb1, gb1_ref.to(dt), 2100, dt, "gb1");
      Tensor none = cuda::matmul_dgelu(to_gpu(gy), to_gpu(w2), to_gpu(pre), nullptr, path);
      expect_gemm_close(none, dpre_ref.to(dt), 64, dt, "dpre without gb1");
    }
  }
}

// v / s rounded to fp8 e4m3 on the CPU.
Tensor scale_down(const Tensor& v, double s) { return scale(v, 1.0 / s).to(DType::kF8E4M3); }

TEST_F(MatmulCuda, Fp8LinearOnHopper) {
  if (cuda::compute_capability() < 89) KILN_GPU_SKIP("fp8 GEMMs need sm_89+");
  // Quantize random values to e4m3 with per-tensor scales; the reference is the exact product of
  // the dequantized values (f64). Hopper's fp8 tensor cores accumulate with fewer than f32's
  // mantissa bits between promotions, so even the f32 output is held to the bf16 tolerance.
  const int64_t m = 96, k = 256, n = 128;
  Tensor xf = random_tensor({m, k}, 50),
         wf = random_tensor({n, k}, 51, DType::kF32, Device::cpu(), 0.05);
  const double xs = 1.0 / 64, ws = 1.0 / 2048;  // stored = value / scale, inside e4m3's range
  Tensor xq = scale_down(xf, xs), wq = scale_down(wf, ws);
  Tensor b = random_tensor({n}, 52, DType::kBF16);
  Tensor ref = add(matmul(scale(f64(xq), xs), scale(f64(wq), ws), false, true), f64(b));
  for (DType od : {DType::kBF16, DType::kF32}) {
    SCOPED_TRACE(dtype_name(od));
    Tensor y = linear_fp8(to_gpu(xq), to_gpu(wq), xs, ws, od, to_gpu(b));
    EXPECT_EQ(y.dtype(), od);
    expect_gemm_close(y, ref.to(od), k, DType::kBF16, "fp8 linear");
  }
}

}  // namespace
}  // namespace kiln
