// embedding on CUDA against the CPU reference (core/ops/embedding.cc): the gather and the
// deterministic scatter-add backward for i32 / i64 / u16 ids and f32 / bf16 / f16 / f64 tables,
// with ids drawn from a small range so most rows repeat many times, rows of 3, 5 and 96 elements
// (copy units of 2, 4 and 16 bytes), a strided ids tensor. Both directions are bit-identical to
// the CPU: the gather copies bits, and the backward adds each id's gradient rows in position order
// in f32 (f64 for f64) exactly as the CPU does. Outputs in poisoned blocks, bit-identical reruns;
// an id out of range (too large, negative) is a kiln::Error naming the id and its position.
// Skips where no GPU is visible.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/ops/cuda_op_test_util.h"
#include "core/ops/elementwise.h"
#include "core/ops/embedding.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::expect_gpu_matches_cpu;
using testing::fresh_seed;
using ::testing::HasSubstr;
using testing::rand_cpu;
using ::testing::ThrowsMessage;

TEST(EmbeddingCuda, MatchesCpuBitForBit) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  struct Case {
    int64_t v, c, id_range;
    Shape ids;
  };
  const Case cases[] = {{1000, 96, 50, {4, 37}},
                        {50, 5, 50, {300}},
                        {64, 3, 7, {2, 3, 5}},
                        {70000, 16, 70000, {257}}};
  for (DType wt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (DType it : {DType::kI32, DType::kI64, DType::kU16}) {
      for (const Case& c : cases) {
        if (it == DType::kU16 && c.id_range > 65536) continue;
        const std::string what = std::string("embedding ") + dtype_name(wt) + " ids " +
                                 dtype_name(it) + " V " + std::to_string(c.v) + " C " +
                                 std::to_string(c.c);
        std::vector<Tensor> in = {rand_cpu({c.v, c.c}, wt, gen),
                                  randint(c.ids, gen, c.id_range, it)};
        testing::GpuRun run = expect_gpu_matches_cpu(
            [](const std::vector<Tensor>& v) { return std::vector<Tensor>{embedding(v[0], v[1])}; },
            in, gen, what);
        ASSERT_EQ(run.outs.size(), 1u) << what;
        // Beyond the tolerance: the very same bits as the CPU, forward and (for a fresh upstream
        // gradient) dW.
        Tensor w = in[0].detach().set_requires_grad(true);
        Tensor out = embedding(w, in[1]);
        EXPECT_TRUE(testing::bit_equal(run.outs[0].to(Device::cpu()), out)) << what;
        Shape gshape = c.ids;
        gshape.push_back(c.c);
        Tensor g = rand_cpu(gshape, wt, gen);
        Tensor want = kiln::grad({out}, {g}, {w})[0];
        Tensor wg = in[0].to(Device::cuda(0)).set_requires_grad(true);
        Tensor got = kiln::grad({embedding(wg, in[1].to(Device::cuda(0)))}, {g.to(Device::cuda(0))},
                                {wg})[0];
        EXPECT_TRUE(testing::bit_equal(got.to(Device::cpu()), want)) << what << " dW";
      }
    }
  }
}

// The backward into an f32 parameter's defined .grad (autograd's accumulation_target): the row
// sums go straight into it. Used as it is (f32 rows), .grad = G0 + dW bit for bit as the CPU's
// (the same f32 sums in position order, added once); through a bf16 cast (as under the precast
// scope), dW summed in f32 from the bf16 rows and added unrounded (a bf16-rounded dW, the path
// without it, would be ~1e-3 off; the bound 1e-5 tells them apart); over a stale .grad holding
// NaNs (lazy zero_grad), written over, rows no id names zero.
TEST(EmbeddingCuda, BackwardGoesStraightIntoTheF32Grad) {
  KILN_SKIP_WITHOUT_GPU();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Generator gen(seed);
  const int64_t v = 1000, c = 96;
  const Tensor w0 = rand_cpu({v, c}, DType::kF32, gen), g0 = rand_cpu({v, c}, DType::kF32, gen);
  const Tensor ids = randint({4, 37}, gen, 50, DType::kI64);
  const Tensor gy = rand_cpu({4, 37, c}, DType::kF32, gen);
  // CPU reference: dW in f64 from gy rounded as each case sees it.
  auto dense = [&](const Tensor& rows) {
    Tensor w = Tensor::zeros({v, c}, DType::kF64).set_requires_grad(true);
    return kiln::grad({embedding(w, ids)}, {rows.to(DType::kF64)}, {w})[0];
  };
  for (int stale = 0; stale <= 1; ++stale) {
    for (DType via : {DType::kF32, DType::kBF16}) {
      const std::string what = std::string(stale ? "stale, " : "") + dtype_name(via);
      Tensor w = w0.to(Device::cuda(0)).set_requires_grad(true);
      testing::set_grad_or_stale(w, g0, stale != 0);
      const Tensor rows = gy.to(via);
      embedding(via == DType::kF32 ? w : w.to(via), ids.to(Device::cuda(0)))
          .backward(rows.to(Device::cuda(0)));
      EXPECT_FALSE(w.grad_stale()) << what;
      const Tensor got = w.grad().to(Device::cpu());
      if (via == DType::kF32 && !stale) {  // bit for bit as the CPU: G0 + its f32 sums
        Tensor wc = w0.detach().set_requires_grad(true);
        wc.set_grad(g0.clone());
        embedding(wc, ids).backward(gy);
        EXPECT_TRUE(testing::bit_equal(got, wc.grad())) << what;
        continue;
      }
      EXPECT_EQ(testing::count_non_finite(got), 0) << what << ": an old value read";
      const Tensor want = stale ? dense(rows) : add(g0.to(DType::kF64), dense(rows));
      const double err = testing::max_abs(sub(got.to(DType::kF64), want)) / testing::max_abs(want);
      EXPECT_LT(err, 1e-5) << what;
    }
  }
}

TEST(EmbeddingCuda, StridedIds) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  std::vector<Tensor> in = {rand_cpu({40, 8}, DType::kF32, gen),
                            randint({6, 9}, gen, 40, DType::kI64)};
  expect_gpu_matches_cpu(
      [](const std::vector<Tensor>& v) {
        return std::vector<Tensor>{embedding(v[0], v[1].transpose(0, 1))};
      },
      in, gen, "transposed ids");
}

TEST(EmbeddingCuda, OutOfRangeIdIsAClearError) {
  KILN_SKIP_WITHOUT_GPU();
  Generator gen(fresh_seed());
  Tensor w = rand_cpu({10, 4}, DType::kF32, gen).to(Device::cuda(0));
  for (DType it : {DType::kI32, DType::kI64, DType::kU16}) {
    Tensor ids = Tensor::from_ints({1, 2, 3, 4, 5, 10, 11, 0}, {2, 4}, it, Device::cuda(0));
    EXPECT_THAT([&] { embedding(w, ids); },
                ThrowsMessage<Error>(HasSubstr("embedding: id 10 at flat position 5 of ids")))
        << dtype_name(it);
  }
  Tensor neg = Tensor::from_ints({3, -1, 2}, {3}, DType::kI64, Device::cuda(0));
  EXPECT_THAT([&] { embedding(w, neg); },
              ThrowsMessage<Error>(HasSubstr("embedding: id -1 at flat position 1 of ids")));
  EXPECT_THAT([&] { embedding(w, neg); },
              ThrowsMessage<Error>(HasSubstr("is out of range [0, V = 10)")));
  // The device is still usable after the error (the flag is per call).
  Tensor ok = Tensor::from_ints({9, 0}, {2}, DType::kI32, Device::cuda(0));
  EXPECT_EQ(embedding(w, ok).to(Device::cpu()).to_vector(),
            embedding(w.to(Device::cpu()), ok.to(Device::cpu())).to_vector());
}

}  // namespace
}  // namespace kiln
