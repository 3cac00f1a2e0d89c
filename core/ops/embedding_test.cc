// Tests for embedding: gather values for every id dtype, shapes, the scatter-add backward by hand
// and by finite differences, determinism across thread counts, bf16, bad ids and arguments.
#include "core/ops/embedding.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/op_test_util.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using ::testing::HasSubstr;
using testing::randn64;
using ::testing::ThrowsMessage;

// (4, 3) table with w[v][c] = 10 v + c.
Tensor table(DType dt = DType::kF32) {
  std::vector<double> v;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 3; ++j) v.push_back(10 * i + j);
  return Tensor::from_vector(v, {4, 3}, dt);
}

TEST(Embedding, GathersRowsForEveryIdDtype) {
  for (DType it : {DType::kI64, DType::kI32, DType::kU16}) {
    Tensor ids = Tensor::from_ints({3, 0, 1, 3}, {2, 2}, it);
    Tensor y = embedding(table(), ids);
    EXPECT_EQ(y.shape(), (Shape{2, 2, 3})) << it;
    EXPECT_EQ(y.to_vector(), (std::vector<double>{30, 31, 32, 0, 1, 2, 10, 11, 12, 30, 31, 32}))
        << it;
  }
  EXPECT_EQ(embedding(table(), Tensor::from_ints({2}, {})).shape(), (Shape{3}));
  EXPECT_EQ(embedding(table(), Tensor::from_ints({1, 2, 3, 0, 1, 2}, {1, 2, 3})).shape(),
            (Shape{1, 2, 3, 3}));
  EXPECT_EQ(embedding(table(), Tensor::from_ints({}, {0})).shape(), (Shape{0, 3}));
}

TEST(Embedding, BackwardScatterAddsByHand) {
  Tensor w = table(DType::kF64).set_requires_grad(true);
  Tensor ids = Tensor::from_ints({3, 0, 3}, {3}, DType::kI32);
  Tensor g = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}, DType::kF64);
  embedding(w, ids).backward(g);
  // Row 0 gets g[1]; row 3 gets g[0] + g[2]; rows 1 and 2 get nothing.
  EXPECT_EQ(w.grad().to_vector(), (std::vector<double>{4, 5, 6, 0, 0, 0, 0, 0, 0, 8, 10, 12}));
}

TEST(Embedding, GradientsMatchFiniteDifferences) {
  Tensor w = randn64({5, 4}, 1);
  Tensor ids = Tensor::from_ints({4, 0, 4, 2, 2, 4}, {2, 3});
  testing::expect_gradcheck([](auto& v) { return embedding(v[0], v[1]); }, {w, ids}, "weight");
}

TEST(Embedding, ThreadCountIndependent) {
  std::vector<int64_t> idv;
  for (int i = 0; i < 4096; ++i) idv.push_back((i * 7919) % 50);
  Tensor ids = Tensor::from_ints(idv, {8, 512});
  testing::expect_thread_count_independent([&] {
    Tensor w = randn64({50, 512}, 1).to(DType::kF32).set_requires_grad(true);
    Tensor y = embedding(w, ids);
    std::vector<Tensor> out = kiln::grad({y}, {randn64({8, 512, 512}, 2).to(DType::kF32)}, {w});
    out.push_back(y);
    return out;
  });
}

TEST(Embedding, Bf16GathersExactlyAndAccumulatesInF32) {
  Tensor w = randn64({6, 8}, 1).to(DType::kBF16);
  Tensor ids = Tensor::from_ints({5, 1, 5, 5}, {4}, DType::kU16);
  Tensor y = embedding(w, ids);
  EXPECT_EQ(y.dtype(), DType::kBF16);
  EXPECT_TRUE(testing::bit_equal(y, embedding(w.to(DType::kF32), ids).to(DType::kBF16)));
  Tensor wl = w.detach().set_requires_grad(true);
  Tensor gy = randn64({4, 8}, 2).to(DType::kBF16);
  Tensor g = kiln::grad({embedding(wl, ids)}, {gy}, {wl})[0];
  Tensor wl32 = w.to(DType::kF32).set_requires_grad(true);
  Tensor g32 = kiln::grad({embedding(wl32, ids)}, {gy.to(DType::kF32)}, {wl32})[0];
  EXPECT_EQ(g.dtype(), DType::kBF16);
  // Summed in f32 and rounded once: exactly the f32 gradient rounded to bf16.
  EXPECT_TRUE(testing::bit_equal(g, g32.to(DType::kBF16)));
}

TEST(Embedding, BadInputIsAClearError) {
  Tensor w = table();
  EXPECT_THAT(
      [&] {
        embedding(w, Tensor::from_ints({0, 4}, {2}));
      },
      ThrowsMessage<Error>(
          HasSubstr("embedding: id 4 at flat position 1 of ids i64[2] cpu is out of range [0, V = "
                    "4)")));
  EXPECT_THAT([&] { embedding(w, Tensor::from_ints({-1}, {1}, DType::kI32)); },
              ThrowsMessage<Error>(HasSubstr("embedding: id -1 at flat position 0")));
  EXPECT_THAT([&] { embedding(w, Tensor::zeros({2})); },
              ThrowsMessage<Error>(HasSubstr(
                  "embedding: ids must be an integer tensor (i32, i64 or u16), got f32[2] cpu")));
  EXPECT_THAT([&] { embedding(Tensor::zeros({12}), Tensor::from_ints({0}, {1})); },
              ThrowsMessage<Error>(HasSubstr("embedding: weight (V, C) must have 2 dims")));
  EXPECT_THAT(
      [&] {
        embedding(Tensor::zeros({4, 3}, DType::kI32), Tensor::from_ints({0}, {1}));
      },
      ThrowsMessage<Error>(HasSubstr("embedding: weight must be a floating tensor")));
  EXPECT_THAT([&] { embedding(w, Tensor()); },
              ThrowsMessage<Error>(HasSubstr("embedding: ids is an undefined tensor")));
  Tensor wc = testing::fake_cuda_tensor({4, 3}), ic = testing::fake_cuda_tensor({2}, DType::kI64);
  // Without a usable GPU a CUDA tensor is a clear error; with one, the CUDA kernel runs instead
  // (tested against this CPU reference in embedding_cuda_test.cc).
  if (!cuda_available()) {
    EXPECT_THAT([&] { embedding(wc, ic); },
                ThrowsMessage<Error>(HasSubstr("embedding: weight is on cuda:0 but")));
  }
  EXPECT_THAT([&] { embedding(w, ic); },
              ThrowsMessage<Error>(HasSubstr("embedding: device mismatch, ids is")));
}

}  // namespace
}  // namespace kiln
