// fp8 current scaling and fp8_linear (core/ops/fp8.h) on the GPU (label gpu; skip without a GPU,
// and the GEMM tests without compute capability 8.9+), on fresh random inputs (seed printed on
// failure) with every CUDA allocation poisoned (0xFF bytes: NaN in bf16, f32 and both fp8
// formats), so an element a kernel leaves unwritten fails. Each test prints what it measured.
//
// 1. amax, scale, descale and the fp8 bytes (row-wise and transposed, odd shapes with tails,
//    misaligned inputs, both formats) equal a host reference bit for bit: amax = max |x|,
//    scale = fp8_max / amax in f32, q = f32_to_fp8(x * scale) (core/dtype.h).
// 2./3. fp8_linear's forward and backward against two references built from the same bf16
//    inputs:
//    - "exact": f64 x w^T + b, dY w, dY^T x, colsum(dY). The error is the fp8 rounding of the
//      operands. Rounding to a format with p mantissa bits has a relative error uniform within
//      +-2^-(p+1) of the leading power of two; weighting by the values' squares (a dot product's
//      error is a random walk over its terms) gives an rms relative error of 2^-p / sqrt(12) /
//      sqrt(7/3) = 0.189 * 2^-p: 2.4% for e4m3 (p = 3), 4.7% for e5m2 (p = 2). A GEMM of two
//      independently rounded operands has ||err|| / ||ref|| ~ the root sum of squares: forward
//      (e4m3 x e4m3) ~3.3%, dX and dW (e5m2 x e4m3) ~5.3%; the host reference below applied to
//      these shapes and distributions on the CPU measures 3.8% and 5.9%. Tolerances: 6e-2
//      forward, 1e-1 backward (1.6-1.7x the measured value; a wrong scale, layout or transpose
//      gives O(1)).
//    - "dequantized": the f64 product of the host-quantized operands (bit-identical to the
//      device's, test 1) times the two descales. Only fp32 accumulation and the bf16 output
//      rounding remain (the formula above with bf16's 7 mantissa bits: rms 0.189 * 2^-7 =
//      1.5e-3 relative): tolerance 5e-3 for ||err|| / ||ref||.
//    - db: column sums of the bf16 dY accumulated in f64 and rounded once to bf16: within
//      2^-8 relative of the exact sum.
//    Also printed: fp8 against kiln's bf16 linear (forward and gradients).
// The model-level checks (set_fp8 on a Transformer, a tiny GPT-2 trained in fp8) are in
// models/fp8_cuda_test.cc.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/check.h"
#include "core/cuda/gemm.h"
#include "core/cuda/runtime.h"
#include "core/dtype.h"
#include "core/ops/elementwise.h"
#include "core/ops/fp8.h"
#include "core/ops/fp8_test_util.h"
#include "core/ops/matmul.h"
#include "core/random.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using fp8_test::bytes_of;
using fp8_test::dequant_product;
using fp8_test::Err;
using fp8_test::error_message;
using fp8_test::error_of;
using fp8_test::f64;
using fp8_test::fresh_seed;
using fp8_test::host_quantize;
using fp8_test::HostQuant;
using fp8_test::kGpu;
using fp8_test::rand_cpu;
using fp8_test::report;
using testing::GpuTest;
using Fp8Cuda = GpuTest;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// ---- 1. amax and quantization against the host ----

struct QuantCase {
  Shape shape;
  double std;
  DType in;
  bool misalign;
  int plant;  // 0: none; 1: a large value at the first element; 2: at the last (a tail)
};

// A CUDA copy of t; with misalign its data pointer is one element past a 16-byte boundary.
Tensor to_gpu(const Tensor& t, bool misalign) {
  if (!misalign) return t.to(kGpu).detach();
  Tensor flat = Tensor::empty({t.numel() + 1}, t.dtype(), kGpu);
  Tensor view = flat.narrow(0, 1, t.numel()).reshape(t.shape()).detach();
  view.copy_(t);
  return view;
}

// Number of positions where got differs from want; describes the first.
int64_t mismatches(const std::vector<uint8_t>& got, const std::vector<uint8_t>& want,
                   std::string* first) {
  int64_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (i < got.size() && got[i] == want[i]) continue;
    if (bad++ == 0) {
      char buf[96];
      std::snprintf(buf, sizeof(buf), "index %zu: got 0x%02x, want 0x%02x", i,
                    i < got.size() ? got[i] : 0, want[i]);
      *first = buf;
    }
  }
  return bad + static_cast<int64_t>(got.size() != want.size());
}

TEST_F(Fp8Cuda, AmaxAndQuantizeMatchTheHostBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const std::vector<QuantCase> cases = {
      {{1, 1}, 1.0, DType::kBF16, false, 0},     {{1, 16}, 1.0, DType::kBF16, false, 2},
      {{37, 53}, 1.0, DType::kBF16, false, 2},   {{64, 48}, 3e-3, DType::kBF16, false, 1},
      {{129, 31}, 50.0, DType::kBF16, true, 2},  {{3, 1031}, 1.0, DType::kBF16, false, 2},
      {{2, 3, 40}, 1.0, DType::kBF16, true, 0},  {{33, 65}, 1.0, DType::kF32, false, 2},
      {{70, 17}, 1.0, DType::kF16, true, 1},     {{256, 384}, 1.0, DType::kBF16, false, 0},
      {{4096, 3}, 1e-2, DType::kBF16, false, 2},
  };
  int64_t total_bad = 0, checked = 0;
  for (const QuantCase& c : cases) {
    Tensor x = rand_cpu(c.shape, c.std, c.in, gen);
    if (c.plant) {  // a large value at the first / last element: amax must find it
      Tensor flat = x.reshape({-1});
      flat.narrow(0, c.plant == 1 ? 0 : flat.numel() - 1, 1).fill_(-40.0 * c.std);
    }
    const int64_t cols = c.shape.back(), rows = x.numel() / cols;
    Tensor xg = to_gpu(x, c.misalign);
    for (DType t : {DType::kF8E4M3, DType::kF8E5M2}) {
      const HostQuant h = host_quantize(x, t);
      std::vector<uint8_t> want_t(h.q.size());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) want_t[k * rows + r] = h.q[r * cols + k];
      const std::string what = x.str() + " -> " + dtype_name(t) +
                               (c.misalign ? " misaligned" : "") + " plant " +
                               std::to_string(c.plant);
      SCOPED_TRACE(what);
      EXPECT_EQ(bits(static_cast<float>(fp8_amax(xg).item())), bits(h.amax)) << "fp8_amax";
      for (int mode = 0; mode < 3; ++mode) {  // row-wise, transposed, both
        const bool row = mode != 1, trans = mode != 0;
        const Fp8Tensor q = fp8_quantize(xg, t, row, trans);
        const std::vector<double> meta = q.meta.to_vector();
        ASSERT_EQ(meta.size(), 3u);
        EXPECT_EQ(bits(static_cast<float>(meta[0])), bits(h.amax)) << "amax";
        EXPECT_EQ(bits(static_cast<float>(meta[1])), bits(h.scale))
            << "scale " << meta[1] << " vs " << h.scale;
        EXPECT_EQ(bits(static_cast<float>(meta[2])), bits(h.descale)) << "descale";
        EXPECT_EQ(q.amax().item(), meta[0]);
        EXPECT_EQ(q.scale().item(), meta[1]);
        EXPECT_EQ(q.descale().item(), meta[2]);
        // cuBLASLt reads the descale in place (no copy per GEMM): 16-byte aligned.
        EXPECT_EQ(reinterpret_cast<uintptr_t>(q.descale().raw()) % 16, 0u);
        EXPECT_EQ(q.data.defined(), row);
        EXPECT_EQ(q.data_t.defined(), trans);
        std::string first;
        if (row) {
          EXPECT_EQ(q.data.shape(), Shape({rows, cols}));
          const int64_t bad = mismatches(bytes_of(q.data), h.q, &first);
          EXPECT_EQ(bad, 0) << "row-wise bytes, first at " << first;
          total_bad += bad;
          checked += rows * cols;
        }
        if (trans) {
          EXPECT_EQ(q.data_t.shape(), Shape({cols, rows}));
          const int64_t bad = mismatches(bytes_of(q.data_t), want_t, &first);
          EXPECT_EQ(bad, 0) << "transposed bytes, first at " << first;
          total_bad += bad;
          checked += rows * cols;
        }
      }
    }
  }
  std::printf("fp8 quantize: %zu shapes x 2 formats x 3 modes, %lld bytes checked, %lld differ\n",
              cases.size(), static_cast<long long>(checked), static_cast<long long>(total_bad));
}

TEST_F(Fp8Cuda, ZeroInputGetsScaleOne) {
  Tensor x = Tensor::zeros({48, 32}, DType::kBF16, kGpu);
  const Fp8Tensor q = fp8_quantize(x, DType::kF8E4M3, true, true);
  EXPECT_EQ(q.meta.to_vector(), std::vector<double>({0.0, 1.0, 1.0}));
  for (uint8_t b : bytes_of(q.data)) ASSERT_EQ(b, 0);
  for (uint8_t b : bytes_of(q.data_t)) ASSERT_EQ(b, 0);
}

// ---- 2. and 3. fp8_linear forward and backward ----

struct LinearCase {
  Shape x_shape;  // (..., K)
  int64_t n;
  bool bias;
};

TEST_F(Fp8Cuda, LinearForwardAndBackwardAgainstF64) {
  KILN_REQUIRE_FP8();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const std::vector<LinearCase> cases = {{{4, 64, 512}, 384, true}, {{48, 256}, 1040, false}};
  for (const LinearCase& c : cases) {
    const int64_t k = c.x_shape.back(), n = c.n;
    const int64_t m = shape_numel(c.x_shape) / k;
    Tensor x = rand_cpu(c.x_shape, 1.0, DType::kBF16, gen);
    Tensor w = rand_cpu({n, k}, 0.05, DType::kBF16, gen);
    Tensor b = c.bias ? rand_cpu({n}, 0.1, DType::kBF16, gen) : Tensor();
    Shape y_shape = c.x_shape;
    y_shape.back() = n;
    Tensor gy = rand_cpu(y_shape, 1.0, DType::kBF16, gen);
    std::printf("fp8_linear x %s, w %s%s:\n", x.str().c_str(), w.str().c_str(),
                c.bias ? ", bias" : "");
    SCOPED_TRACE(x.str() + " @ " + w.str());

    Tensor xg = x.to(kGpu).detach().set_requires_grad(true);
    Tensor wg = w.to(kGpu).detach().set_requires_grad(true);
    Tensor bg = c.bias ? b.to(kGpu).detach().set_requires_grad(true) : Tensor();
    Tensor y = fp8_linear(xg, wg, bg);
    ASSERT_EQ(y.shape(), y_shape);
    ASSERT_EQ(y.dtype(), DType::kBF16);
    ASSERT_NE(y.grad_fn(), nullptr);
    EXPECT_STREQ(y.grad_fn()->name(), "Fp8Linear");
    std::vector<Tensor> leaves = {xg, wg};
    if (c.bias) leaves.push_back(bg);
    std::vector<Tensor> g = kiln::grad({y}, {gy.to(kGpu)}, leaves);

    // f64 references from the same bf16 values.
    Tensor x2 = f64(x).reshape({m, k}), w64 = f64(w), gy2 = f64(gy).reshape({m, n});
    Tensor ref = matmul(x2, w64, false, true);
    if (c.bias) ref = add(ref, f64(b));
    Tensor ref_dx = matmul(gy2, w64), ref_dw = matmul(gy2, x2, true, false);
    // Dequantized references: the same fp8 operands the GPU multiplies.
    Tensor x2b = x.reshape({m, k}), gy2b = gy.reshape({m, n});
    Tensor deq = dequant_product(x2b, DType::kF8E4M3, w, DType::kF8E4M3);
    if (c.bias) deq = add(deq, f64(b));
    // dX = dY W: A = dY (e5m2), B = W^T (e4m3); dW = dY^T X: A = dY^T (e5m2), B = X^T (e4m3).
    Tensor deq_dx =
        dequant_product(gy2b, DType::kF8E5M2, w.transpose(0, 1).contiguous(), DType::kF8E4M3);
    Tensor deq_dw = dequant_product(gy2b.transpose(0, 1).contiguous(), DType::kF8E5M2,
                                    x2b.transpose(0, 1).contiguous(), DType::kF8E4M3);

    Tensor y2 = f64(y).reshape({m, n}), dx2 = f64(g[0]).reshape({m, k}), dw2 = f64(g[1]);
    report("y vs exact f64", error_of(y2, ref), 6e-2);
    report("y vs dequantized f64", error_of(y2, deq), 5e-3);
    report("dx vs exact f64", error_of(dx2, ref_dx), 1e-1);
    report("dx vs dequantized f64", error_of(dx2, deq_dx), 5e-3);
    report("dw vs exact f64", error_of(dw2, ref_dw), 1e-1);
    report("dw vs dequantized f64", error_of(dw2, deq_dw), 5e-3);
    if (c.bias) {
      Tensor ref_db = sum_to(gy2, {n});
      const Err e = error_of(f64(g[2]), ref_db);
      std::printf("  db max |err| %.3e of max |ref| %.3e\n", e.max_abs, e.ref_max);
      std::printf("  backward passes with dY in e4m3 so far: %lld\n",
                  static_cast<long long>(fp8_e4m3_backward_count()));
      KILN_EXPECT_CLOSE(f64(g[2]), ref_db, std::ldexp(1.0, -8), 1e-6 * e.ref_max);
    }

    // Against kiln's bf16 linear (printed; bounded by the exact-reference tolerances).
    Tensor xb = x.to(kGpu).detach().set_requires_grad(true);
    Tensor wb = w.to(kGpu).detach().set_requires_grad(true);
    Tensor bb = c.bias ? b.to(kGpu).detach().set_requires_grad(true) : Tensor();
    Tensor yb = linear(xb, wb, bb);
    std::vector<Tensor> lb = {xb, wb};
    std::vector<Tensor> gb = kiln::grad({yb}, {gy.to(kGpu)}, lb);
    report("bf16 linear y vs exact f64", error_of(f64(yb).reshape({m, n}), ref), 1e-2);
    report("y vs bf16 linear", error_of(y2, f64(yb).reshape({m, n})), 6e-2);
    report("dx vs bf16 linear", error_of(dx2, f64(gb[0]).reshape({m, k})), 1e-1);
    report("dw vs bf16 linear", error_of(dw2, f64(gb[1])), 1e-1);

    // Only one input needing a gradient: the forward keeps one transposed copy, and the
    // gradient it computes is the same bits.
    Tensor x_only = x.to(kGpu).detach().set_requires_grad(true);
    Tensor y_x = fp8_linear(x_only, w.to(kGpu), c.bias ? b.to(kGpu) : Tensor());
    EXPECT_TRUE(testing::same_bits(y_x, y));
    EXPECT_TRUE(testing::same_bits(kiln::grad({y_x}, {gy.to(kGpu)}, {x_only})[0], g[0]));
    Tensor w_only = w.to(kGpu).detach().set_requires_grad(true);
    Tensor y_w = fp8_linear(x.to(kGpu), w_only, c.bias ? b.to(kGpu) : Tensor());
    EXPECT_TRUE(testing::same_bits(kiln::grad({y_w}, {gy.to(kGpu)}, {w_only})[0], g[1]));
    // Without any input requiring a gradient: no node, the same forward bits.
    Tensor y_ng = fp8_linear(x.to(kGpu), w.to(kGpu), c.bias ? b.to(kGpu) : Tensor());
    EXPECT_EQ(y_ng.grad_fn(), nullptr);
    EXPECT_TRUE(testing::same_bits(y_ng, y));
  }
}

// fp8_linear's forward with cuBLASLt's fast accumulation (KILN_FP8_FAST_ACCUM=1): a plan of its
// own, and y still close to the dequantized product. Tolerance: fast accumulation keeps the
// partial sums in the tensor cores' accumulator without the periodic promotion to fp32, which
// loses low bits over long K; over K = 4096 of unit-scale products this stays within a few bf16
// ulps of the sum (rms ~1e-3 relative, against 1.5e-3 for the bf16 output rounding alone), so
// the bound is the same 5e-3 as with promotion, and a wrong setting (no scales, wrong
// operands) gives O(1). The gradients' GEMMs never take it: dX, dW are the same bits either way.
TEST_F(Fp8Cuda, FastAccumulationForwardStaysCloseToTheDequantizedProduct) {
  KILN_REQUIRE_FP8();
  struct Reset {
    ~Reset() { set_fp8_fast_accum_override(-1); }
  } reset;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const int64_t m = 256, k = 4096, n = 512;
  Tensor x = rand_cpu({m, k}, 1.0, DType::kBF16, gen);
  Tensor w = rand_cpu({n, k}, 0.02, DType::kBF16, gen);
  Tensor gy = rand_cpu({m, n}, 1.0, DType::kBF16, gen);
  const Tensor deq = dequant_product(x, DType::kF8E4M3, w, DType::kF8E4M3);
  std::vector<Tensor> ys, dxs, dws;
  for (int fast : {0, 1}) {
    set_fp8_fast_accum_override(fast);
    EXPECT_EQ(fp8_fast_accum_forward(), fast == 1);
    const int64_t plans = cuda::gemm_plan_count();
    Tensor xg = x.to(kGpu).detach().set_requires_grad(true);
    Tensor wg = w.to(kGpu).detach().set_requires_grad(true);
    Tensor y = fp8_linear(xg, wg);
    std::vector<Tensor> g = kiln::grad({y}, {gy.to(kGpu)}, {xg, wg});
    if (fast == 1) EXPECT_GE(cuda::gemm_plan_count(), plans + 1) << "no plan of its own";
    report(fast ? "fast-accumulation y vs dequantized f64" : "y vs dequantized f64",
           error_of(f64(y), deq), 5e-3);
    ys.push_back(y);
    dxs.push_back(g[0]);
    dws.push_back(g[1]);
  }
  EXPECT_TRUE(testing::same_bits(dxs[0], dxs[1]));
  EXPECT_TRUE(testing::same_bits(dws[0], dws[1]));
}

// ---- argument checks (these run without a GPU too) ----

TEST(Fp8Args, CpuTensorsAndBadShapesAreErrorsNamingTheOp) {
  Tensor x = Tensor::zeros({16, 32}, DType::kBF16), w = Tensor::zeros({16, 32}, DType::kBF16);
  EXPECT_NE(error_message([&] { fp8_linear(x, w); }).find("fp8_linear"), std::string::npos);
  EXPECT_NE(error_message([&] { fp8_quantize(x, DType::kF8E4M3); }).find("fp8_quantize"),
            std::string::npos);
  EXPECT_NE(error_message([&] { fp8_amax(x); }).find("fp8_amax"), std::string::npos);
  EXPECT_FALSE(fp8_linear_applies(x, w)) << "CPU tensors";
  if (!cuda_available()) {
    if (testing::gpu_required()) ADD_FAILURE() << "KILN_REQUIRE_GPU=1 but no CUDA device visible";
    return;
  }
  Tensor xg = x.to(kGpu), wg = w.to(kGpu);
  EXPECT_TRUE(fp8_linear_applies(xg, wg));
  EXPECT_FALSE(fp8_linear_applies(xg.narrow(0, 0, 8), wg)) << "8 rows";
  EXPECT_FALSE(fp8_linear_applies(xg, wg.narrow(0, 0, 8))) << "N = 8";
  EXPECT_FALSE(fp8_linear_applies(xg.to(DType::kF32), wg.to(DType::kF32))) << "f32";
  const std::string msg = error_message([&] { fp8_linear(xg.narrow(0, 0, 8), wg); });
  EXPECT_NE(msg.find("fp8_linear"), std::string::npos) << msg;
  EXPECT_NE(msg.find("multiples of 16"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kiln
