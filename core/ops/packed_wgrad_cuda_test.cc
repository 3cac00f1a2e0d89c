// The CUDA linear of a packed weight (concat_or_view along dim 0 of bf16 casts of f32 parameters,
// as Llama's q/k/v) with KILN_PACKED_DIRECT_WGRAD forced on: each piece's weight gradient goes
// straight into its f32 .grad (one beta = 1 GEMM per piece over its column block of gy), label gpu
// (skips without a GPU).
// 1. .grad = G0 + gy_i^T x with the f32 accumulator unrounded: within 2e-4 (of the largest
//    element) of the f64 product of the same bf16 operands, where the packed bf16 gradient of the
//    old path, rounded to 8 bits (2^-9 relative) before its add, is ~2e-3 off (checked: the bound
//    tells the two apart). A block read at a wrong column offset is off by O(1). Two backward
//    passes (micro-steps) add twice; every piece's hook fires once per pass; the counter of pieces
//    added directly grows by 3 a pass (0 with the switch off). The packed bias gradient still
//    goes the old way (one column sum in bf16, split by its concat).
// 2. Where the fast path must not run (a piece's offset not 16-byte aligned; a piece without a
//    defined .grad) the counter does not move and every .grad equals the switch-off run's bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/view.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::random_tensor;
using testing::same_bits;

using PackedWgradCuda = testing::GpuTest;

const Device kGpu = Device::cuda(0);

Tensor to_gpu(const Tensor& t) { return t.to(kGpu).detach(); }
Tensor f64(const Tensor& t) { return t.to(Device::cpu()).to(DType::kF64).detach(); }

// max |got - want| / max |want|; NaN (failing every bound) if got holds a NaN.
double rel_err(const Tensor& got, const Tensor& want) {
  return testing::max_abs(sub(f64(got), want)) / testing::max_abs(want);
}

struct ForcePacked {
  explicit ForcePacked(bool on) { set_packed_direct_wgrad_override(on ? 1 : 0); }
  ~ForcePacked() { set_packed_direct_wgrad_override(-1); }
};

// f32 CUDA leaves of (rows_i, in) with .grad G0 (f32, seeded) and hooks counting into *hooks.
struct Pieces {
  std::vector<Tensor> w, b, g0, gb0;
  int hooks = 0;
};

void make_pieces(Pieces* p, const std::vector<int64_t>& rows, int64_t in, bool bias) {
  uint64_t seed = 50;
  for (int64_t r : rows) {
    Tensor w = to_gpu(random_tensor({r, in}, seed++, DType::kF32, Device::cpu(), 0.05));
    w.set_requires_grad(true);
    p->g0.push_back(to_gpu(random_tensor({r, in}, seed++, DType::kF32)));
    w.set_grad(clone(p->g0.back()));
    w.register_grad_ready_hook([p](Tensor&) { ++p->hooks; });
    p->w.push_back(w);
    if (!bias) continue;
    Tensor b = to_gpu(random_tensor({r}, seed++, DType::kF32, Device::cpu(), 0.05));
    b.set_requires_grad(true);
    p->gb0.push_back(to_gpu(random_tensor({r}, seed++, DType::kF32)));
    b.set_grad(clone(p->gb0.back()));
    p->b.push_back(b);
  }
}

// linear(x, concat_or_view of the pieces' bf16 casts [, packed bias]) backward with gy.
void packed_backward(const Pieces& p, const Tensor& x, const Tensor& gy) {
  std::vector<Tensor> w, b;
  for (const Tensor& t : p.w) w.push_back(t.to(DType::kBF16));
  for (const Tensor& t : p.b) b.push_back(t.to(DType::kBF16));
  linear(x, concat_or_view(w, 0), b.empty() ? Tensor() : concat_or_view(b, 0)).backward(gy);
}

// dW_i = gy_i^T x in f64 from the bf16 operands (gy_i: gy's column block of piece i).
std::vector<Tensor> reference_blocks(const Tensor& gy, const Tensor& x, const Pieces& p) {
  std::vector<Tensor> out;
  int64_t off = 0;
  for (const Tensor& w : p.w) {
    out.push_back(matmul(f64(gy).narrow(1, off, w.size(0)).contiguous(), f64(x), true, false));
    off += w.size(0);
  }
  return out;
}

TEST_F(PackedWgradCuda, EachPiecesGradientAddsIntoItsF32GradUnrounded) {
  const int64_t rows = 256, in = 192;
  const std::vector<int64_t> sizes = {128, 64, 64};  // q, k, v: blocks at 0, 256, 384 bytes
  Tensor x = to_gpu(random_tensor({rows, in}, 41, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, 256}, 42, DType::kBF16));
  for (bool on : {true, false}) {
    SCOPED_TRACE(on ? "switch on" : "switch off");
    ForcePacked force(on);
    Pieces p;
    make_pieces(&p, sizes, in, /*bias=*/true);
    const std::vector<Tensor> dw = reference_blocks(gy, x, p);
    for (int pass = 1; pass <= 2; ++pass) {
      SCOPED_TRACE("backward " + std::to_string(pass));
      const int64_t before = packed_direct_wgrad_pieces();
      packed_backward(p, x, gy);
      EXPECT_EQ(packed_direct_wgrad_pieces() - before, on ? 3 : 0);
      EXPECT_EQ(p.hooks, 3 * pass);
      int64_t off = 0;
      for (size_t i = 0; i < p.w.size(); ++i) {
        const Tensor want = add(f64(p.g0[i]), scale(dw[i], pass));
        const double err = rel_err(p.w[i].grad(), want);
        if (on) {
          EXPECT_LT(err, 2e-4) << "piece " << i << ": dW not added unrounded into its .grad";
        } else {
          EXPECT_GT(err, 2e-4) << "piece " << i << ": the bound does not tell the paths apart";
          EXPECT_LT(err, 2e-2) << "piece " << i;
        }
        // The bias: the packed column sum in bf16, split (2^-9 per element, summed over 256 rows).
        const Tensor colsum =
            sum_to(f64(gy).narrow(1, off, p.w[i].size(0)).contiguous(), {p.w[i].size(0)});
        EXPECT_LT(rel_err(p.b[i].grad(), add(f64(p.gb0[i]), scale(colsum, pass))), 2e-2)
            << "bias " << i;
        off += p.w[i].size(0);
      }
    }
  }
}

// Runs the packed backward with the switch on and off from the same G0 (piece `no_grad`, if >= 0,
// without a .grad): returns whether the direct path ran, and expects every .grad the same bits.
void expect_fallback(const std::vector<int64_t>& sizes, int no_grad, const std::string& what) {
  SCOPED_TRACE(what);
  const int64_t rows = 64, in = 64;
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  Tensor x = to_gpu(random_tensor({rows, in}, 43, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, total}, 44, DType::kBF16));
  std::vector<std::vector<Tensor>> grads;
  for (bool on : {true, false}) {
    ForcePacked force(on);
    Pieces p;
    make_pieces(&p, sizes, in, /*bias=*/false);
    if (no_grad >= 0) p.w[no_grad].zero_grad();
    const int64_t before = packed_direct_wgrad_pieces();
    packed_backward(p, x, gy);
    EXPECT_EQ(packed_direct_wgrad_pieces(), before) << "the direct path ran";
    EXPECT_EQ(p.hooks, static_cast<int>(sizes.size()));
    grads.emplace_back();
    for (const Tensor& w : p.w) grads.back().push_back(w.grad());
  }
  for (size_t i = 0; i < sizes.size(); ++i)
    EXPECT_TRUE(same_bits(grads[0][i], grads[1][i])) << "piece " << i;
}

TEST_F(PackedWgradCuda, FallsBackWhereTheDirectPathMustNotRun) {
  // The second block starts 12 bf16 = 24 bytes into gy's row: not 16-byte aligned.
  expect_fallback({12, 20, 8}, -1, "misaligned block");
  // A packed row of 36 bf16 = 72 bytes: gy's leading dimension is not a multiple of 8.
  expect_fallback({16, 16, 4}, -1, "leading dimension");
  // Aligned, but one piece has no .grad yet (as before a trainer's first step).
  expect_fallback({32, 16, 16}, 1, "a piece without a .grad");
}

// Gives piece i's weight a .grad that is a view of one f32 buffer at offsets[i] (elements),
// holding G0 (or NaNs marked stale where stale[i]: a GEMM that reads them shows NaNs).
Tensor place_grads(Pieces* p, const std::vector<int64_t>& offsets, const std::vector<bool>& stale) {
  int64_t end = 0;
  for (size_t i = 0; i < p->w.size(); ++i) end = std::max(end, offsets[i] + p->w[i].numel());
  Tensor buf = Tensor::zeros({end}, DType::kF32, kGpu);
  for (size_t i = 0; i < p->w.size(); ++i) {
    Tensor g = buf.narrow(0, offsets[i], p->w[i].numel()).reshape(p->w[i].shape());
    if (stale[i]) {
      g.fill_(std::nan(""));
    } else {
      g.copy_(p->g0[i]);
    }
    p->w[i].set_grad(g);
    if (stale[i]) p->w[i].mark_grad_stale();
  }
  return buf;
}

// The pieces' .grads one positive stride apart, both current (added) or both stale (written over):
// one batched GEMM for both pieces, each .grad within 2e-4 of the f64 reference (G0 + dW, or dW
// over a stale .grad: NaNs read would show). Where it must not run (the .grads in the wrong order,
// overlapping, one stale and one current, the switch off) the per-piece GEMMs run instead, with the
// same bound.
TEST_F(PackedWgradCuda, EqualPiecesOneStrideApartRunAsOneBatchedGemm) {
  const int64_t rows = 256, in = 192, r = 64, n = r * in;
  Tensor x = to_gpu(random_tensor({rows, in}, 45, DType::kBF16));
  Tensor gy = to_gpu(random_tensor({rows, 2 * r}, 46, DType::kBF16));
  ForcePacked force(true);
  struct Case {
    std::string what;
    std::vector<int64_t> offsets;
    std::vector<bool> stale;
    bool batched_on, want_batched;
  };
  const std::vector<Case> cases = {
      {"current, 32 floats apart", {0, n + 32}, {false, false}, true, true},
      {"stale, adjacent", {0, n}, {true, true}, true, true},
      {"second .grad first in memory", {n + 32, 0}, {false, false}, true, false},
      {"one stale, one current", {0, n + 32}, {true, false}, true, false},
      {"stride not a multiple of 16 bytes", {0, n + 2}, {false, false}, true, false},
      {"switch off", {0, n + 32}, {true, true}, false, false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    set_packed_wgrad_batched_override(c.batched_on ? 1 : 0);
    Pieces p;
    make_pieces(&p, {r, r}, in, /*bias=*/false);
    const Tensor keep = place_grads(&p, c.offsets, c.stale);
    const std::vector<Tensor> dw = reference_blocks(gy, x, p);
    const int64_t batched = packed_wgrad_batched_gemms(), pieces = packed_direct_wgrad_pieces();
    packed_backward(p, x, gy);
    set_packed_wgrad_batched_override(-1);
    EXPECT_EQ(packed_wgrad_batched_gemms() - batched, c.want_batched ? 1 : 0);
    EXPECT_EQ(packed_direct_wgrad_pieces() - pieces, 2);
    for (size_t i = 0; i < 2; ++i) {
      const Tensor want = c.stale[i] ? dw[i] : add(f64(p.g0[i]), dw[i]);
      EXPECT_EQ(testing::count_non_finite(p.w[i].grad()), 0)
          << "piece " << i;  // max_abs skips NaNs
      EXPECT_LT(rel_err(p.w[i].grad(), want), 2e-4) << "piece " << i;
    }
  }
}

}  // namespace
}  // namespace kiln
