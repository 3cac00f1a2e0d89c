// cross_entropy and linear_cross_entropy on CUDA against the CPU reference
// (core/ops/cross_entropy.cc). cross_entropy: loss and logits gradient for f32 / bf16 / f16 / f64,
// i32 / i64 targets, ignored rows, a GPT-2-sized vocabulary row, an upstream gradient other than
// 1, every row ignored (loss 0, zero gradient), and a bad target as a kiln::Error.
// linear_cross_entropy (the classifier fused with the loss): the fused CUDA op against the
// composed CPU reference linear + cross_entropy, in one chunk and in chunks of rows (the last one
// partial), gradients of x and of the weight alone or together, no-grad mode. Every case: outputs
// and gradients in poisoned blocks, bit-identical rerun (cuda_op_test_util.h states the
// tolerance). Skips where no GPU is visible.
#include "core/ops/cross_entropy_cuda.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using ::testing::HasSubstr;
using testing::rand_cpu;
using ::testing::ThrowsMessage;

// n targets in [0, v), about a quarter of them ignore_index.
Tensor targets_with_ignored(int64_t n, int64_t v, DType dt, int64_t ignore, Generator& gen) {
  std::vector<int64_t> t = randint({n}, gen, v, DType::kI64).to_ints();
  std::vector<int64_t> coin = randint({n}, gen, 4, DType::kI64).to_ints();
  for (int64_t i = 0; i < n; ++i)
    if (coin[i] == 0) t[i] = ignore;
  return Tensor::from_ints(t, {n}, dt);
}

TEST(CrossEntropyCuda, MatchesCpuForwardAndBackward) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    int64_t n, v;
  };
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (DType tt : {DType::kI32, DType::kI64}) {
      for (const Case& c : {Case{37, 1000}, Case{4, 50257}, Case{300, 17}}) {
        const int64_t ignore = tt == DType::kI32 ? -100 : 5;  // an in-range ignore_index too
        Tensor targets = targets_with_ignored(c.n, c.v, tt, ignore, gen);
        std::vector<Tensor> in = {rand_cpu({c.n, c.v}, dt, gen), targets};
        expect_gpu_matches_cpu(
            [ignore](const std::vector<Tensor>& v) {
              return std::vector<Tensor>{cross_entropy(v[0], v[1], ignore)};
            },
            in, gen,
            std::string("cross_entropy ") + dtype_name(dt) + " targets " + dtype_name(tt) + " " +
                std::to_string(c.n) + "x" + std::to_string(c.v));
      }
    }
  }
}

TEST(CrossEntropyCuda, AllIgnoredIsZeroWithZeroGradient) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor logits = rand_cpu({6, 11}, DType::kF32, gen).to(Device::cuda(0)).set_requires_grad(true);
  Tensor t = Tensor::full({6}, -100, DType::kI64, Device::cuda(0));
  Tensor loss = cross_entropy(logits, t);
  EXPECT_EQ(loss.item(), 0.0);
  Tensor g = kiln::grad({loss}, {Tensor()}, {logits})[0];
  for (double x : g.to_vector()) EXPECT_EQ(x, 0.0);
}

TEST(CrossEntropyCuda, BadTargetIsAClearError) {
  KILN_SKIP_WITHOUT_GPU();
  Tensor logits = Tensor::zeros({3, 5}, DType::kF32, Device::cuda(0));
  EXPECT_THAT(
      [&] {
        cross_entropy(logits, Tensor::from_ints({0, 7, 9}, {3}, DType::kI64, Device::cuda(0)));
      },
      ThrowsMessage<Error>(
          HasSubstr("cross_entropy: target 7 at row 1 is out of range for V = 5")));
  EXPECT_THAT(
      [&] {
        cross_entropy(logits, Tensor::from_ints({0, 1, -2}, {3}, DType::kI32, Device::cuda(0)));
      },
      ThrowsMessage<Error>(HasSubstr("target -2 at row 2 is out of range")));
  Tensor x = Tensor::zeros({3, 4}, DType::kF32, Device::cuda(0));
  Tensor w = Tensor::zeros({5, 4}, DType::kF32, Device::cuda(0));
  EXPECT_THAT(
      [&] {
        linear_cross_entropy(x, w, Tensor::from_ints({0, 5, 2}, {3}, DType::kI64, Device::cuda(0)));
      },
      ThrowsMessage<Error>(
          HasSubstr("linear_cross_entropy: target 5 at row 1 is out of range for V = 5")));
}

TEST(LinearCrossEntropyCuda, FusedMatchesLinearThenCrossEntropyOnCpu) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    int64_t n, c, v, chunk;
  };
  // V % 8 == 0 (504, 50304) takes the vectorised row kernel for bf16 / f16, the others the scalar
  // one.
  const Case cases[] = {{67, 96, 500, 0}, {67, 96, 500, 16}, {5, 64, 50257, 2}, {130, 8, 33, 1},
                        {67, 96, 504, 0}, {67, 96, 504, 16}, {9, 64, 50304, 4}};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Case& c : cases) {
      Tensor targets = targets_with_ignored(c.n, c.v, DType::kI64, -100, gen);
      // Scaled so the logits are O(1), as a trained classifier's are.
      const double s = 1.0 / std::sqrt(static_cast<double>(c.c));
      std::vector<Tensor> in = {rand_cpu({c.n, c.c}, dt, gen),
                                (randn({c.v, c.c}, gen, DType::kF64, Device::cpu(), 0.0, s)).to(dt),
                                targets};
      const int64_t chunk = c.chunk;
      expect_gpu_matches_cpu(
          [chunk](const std::vector<Tensor>& v) {
            if (v[0].device().is_cpu())  // the composed reference
              return std::vector<Tensor>{cross_entropy(linear(v[0], v[1]), v[2])};
            return std::vector<Tensor>{linear_cross_entropy(v[0], v[1], v[2], -100, chunk)};
          },
          in, gen,
          std::string("linear_cross_entropy ") + dtype_name(dt) + " N " + std::to_string(c.n) +
              " C " + std::to_string(c.c) + " V " + std::to_string(c.v) + " chunk " +
              std::to_string(c.chunk));
    }
  }
}

TEST(LinearCrossEntropyCuda, OneGradientAtATimeAndNoGrad) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({20, 32}, DType::kF32, gen), w = rand_cpu({70, 32}, DType::kF32, gen);
  Tensor t = targets_with_ignored(20, 70, DType::kI32, -100, gen);
  Tensor tg = t.to(Device::cuda(0));
  Tensor want = cross_entropy(linear(x, w), t);
  for (int which = 0; which < 2; ++which) {
    Tensor xc = x.detach().set_requires_grad(which == 0),
           wc = w.detach().set_requires_grad(which == 1);
    Tensor xg = x.to(Device::cuda(0)).set_requires_grad(which == 0);
    Tensor wg = w.to(Device::cuda(0)).set_requires_grad(which == 1);
    Tensor want_g =
        kiln::grad({cross_entropy(linear(xc, wc), t)}, {Tensor()}, {which == 0 ? xc : wc})[0];
    Tensor loss = linear_cross_entropy(xg, wg, tg, -100, 7);
    testing::expect_gpu_close(loss, want, "loss");
    Tensor got_g = kiln::grad({loss}, {Tensor()}, {which == 0 ? xg : wg})[0];
    testing::expect_gpu_close(got_g, want_g, which == 0 ? "dx alone" : "dW alone");
  }
  NoGradGuard ng;
  Tensor loss = linear_cross_entropy(x.to(Device::cuda(0)), w.to(Device::cuda(0)), tg);
  EXPECT_FALSE(loss.requires_grad());
  testing::expect_gpu_close(loss, want, "no-grad loss");
}

// The weight gradient of an f32 weight used through its bf16 cast (as a model's head uses its
// master weight) goes from the f32 accumulator straight into the f32 .grad (KILN_CE_DIRECT_WGRAD,
// default): scaled by the upstream gradient (3 here), added to a current .grad, written over a
// stale one (NaNs never read). Against the f64 gradient of the same bf16-rounded inputs.
TEST(LinearCrossEntropyCuda, WeightGradientGoesStraightIntoTheF32Grad) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const int64_t n = 300, c = 64, v = 1000;
  const Tensor x0 = rand_cpu({n, c}, DType::kF32, gen), w0 = rand_cpu({v, c}, DType::kF32, gen);
  const Tensor t = randint({n}, gen, v, DType::kI64);
  // f64 reference from the bf16-rounded inputs the GPU computes with.
  Tensor wr = w0.to(DType::kBF16).to(DType::kF64).set_requires_grad(true);
  const Tensor xr = x0.to(DType::kBF16).to(DType::kF64);
  const Tensor ref =
      kiln::grad({linear_cross_entropy(xr, wr, t)}, {Tensor::scalar(3.0, DType::kF64)}, {wr})[0]
          .detach();
  const double mag = testing::max_abs(ref);
  const Tensor g0 = scale(rand_cpu({v, c}, DType::kF32, gen), mag);  // as large as the gradient
  for (int stale = 0; stale <= 1; ++stale) {
    const std::string what = stale ? "stale .grad" : "current .grad";
    Tensor w = w0.to(Device::cuda(0)).set_requires_grad(true);
    testing::set_grad_or_stale(w, g0, stale != 0);
    const Tensor loss = linear_cross_entropy(x0.to(DType::kBF16).to(Device::cuda(0)),
                                             w.to(DType::kBF16), t.to(Device::cuda(0)));
    scale(loss, 3.0).backward();
    EXPECT_FALSE(w.grad_stale()) << what;
    const Tensor got = w.grad().to(Device::cpu()).to(DType::kF64);
    EXPECT_EQ(testing::count_non_finite(got), 0) << what << ": an old value read";
    const Tensor want = stale ? ref : add(g0.to(DType::kF64), ref);
    // bf16 logits and softmax gradients (each rounded once, 2^-8) summed over 300 rows in f32.
    const double err = testing::max_abs(sub(got, want)) / mag;
    EXPECT_LT(err, 2e-2) << what;
  }
}

TEST(LinearCrossEntropyCuda, ChunkedEqualsSingleChunk) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor x = rand_cpu({50, 40}, DType::kF32, gen).to(Device::cuda(0));
  Tensor w = rand_cpu({300, 40}, DType::kF32, gen).to(Device::cuda(0));
  Tensor t = targets_with_ignored(50, 300, DType::kI64, -100, gen).to(Device::cuda(0));
  std::vector<Tensor> ref;
  for (int64_t chunk : {0, 1, 7, 49, 50, 1000}) {
    Tensor xl = x.detach().set_requires_grad(true), wl = w.detach().set_requires_grad(true);
    Tensor loss = linear_cross_entropy(xl, wl, t, -100, chunk);
    std::vector<Tensor> got = kiln::grad({loss}, {Tensor()}, {xl, wl});
    got.insert(got.begin(), loss);
    if (ref.empty()) {
      ref = got;
      continue;
    }
    // Chunking changes the GEMM shapes (and so possibly their summation order) and the order dW
    // accumulates in: equal within the f32 tolerance, not bit for bit.
    for (size_t i = 0; i < got.size(); ++i)
      testing::expect_gpu_close(got[i], ref[i].to(Device::cpu()),
                                "chunk " + std::to_string(chunk) + " result " + std::to_string(i));
  }
}

// The shared-memory row kernel (the row kept in shared memory between the two passes) gives the
// vector kernel's bits: loss, dx and dW, bf16 and f16, GPT-2's and Llama's vocabularies, several
// chunks; a row too large for shared memory falls back to the vector kernel.
TEST(LinearCrossEntropyCuda, SharedRowKernelBitIdenticalToVector) {
  KILN_SKIP_WITHOUT_GPU();
  struct Reset {
    ~Reset() { cuda::set_ce_rows(cuda::CeRows::kEnv); }
  } reset;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    int64_t n, c, v, chunk;
    cuda::CeRows ran;  // what kShared must run
  };
  const Case cases[] = {{9, 64, 50304, 4, cuda::CeRows::kShared},
                        {33, 64, 32000, 16, cuda::CeRows::kShared},
                        {67, 96, 504, 0, cuda::CeRows::kShared},
                        {3, 16, 131072, 0, cuda::CeRows::kVector}};  // 256 KiB of bf16 logits
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (const Case& c : cases) {
      const std::string what = std::string(dtype_name(dt)) + " V " + std::to_string(c.v);
      Tensor x = rand_cpu({c.n, c.c}, dt, gen).to(Device::cuda(0));
      const double s = 1.0 / std::sqrt(static_cast<double>(c.c));
      Tensor w =
          randn({c.v, c.c}, gen, DType::kF64, Device::cpu(), 0.0, s).to(dt).to(Device::cuda(0));
      Tensor t = targets_with_ignored(c.n, c.v, DType::kI32, -100, gen).to(Device::cuda(0));
      std::vector<std::vector<Tensor>> got;
      for (cuda::CeRows mode : {cuda::CeRows::kVector, cuda::CeRows::kShared}) {
        cuda::set_ce_rows(mode);
        Tensor xl = x.detach().set_requires_grad(true), wl = w.detach().set_requires_grad(true);
        Tensor loss = linear_cross_entropy(xl, wl, t, -100, c.chunk);
        EXPECT_EQ(cuda::last_ce_rows(), mode == cuda::CeRows::kVector ? mode : c.ran) << what;
        std::vector<Tensor> r = kiln::grad({loss}, {Tensor()}, {xl, wl});
        r.insert(r.begin(), loss);
        got.push_back(r);
      }
      for (size_t i = 0; i < got[0].size(); ++i)
        EXPECT_TRUE(testing::bit_equal(got[0][i].to(Device::cpu()), got[1][i].to(Device::cpu())))
            << what << " result " << i;
    }
  }
}

}  // namespace
}  // namespace kiln
