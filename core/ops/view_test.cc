// CPU tests for the view and copy ops: shapes, strides shared with the base, values, gradients
// against f64 finite differences, and clear errors.
#include "core/ops/view.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/check.h"
#include "core/ops/elementwise.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::randn64;

Tensor iota(const Shape& s) {
  std::vector<double> v(shape_numel(s));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(i);
  return Tensor::from_vector(v, s, DType::kF64);
}

TEST(View, ViewsShareStorageAndIndexCorrectly) {
  Tensor x = iota({2, 3, 4});
  Tensor t = x.transpose(0, 2);  // (4, 3, 2)
  EXPECT_EQ(t.shape(), (Shape{4, 3, 2}));
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.storage(), x.storage());
  EXPECT_EQ(t.contiguous().to_vector()[1], 12.0);                  // t[0,0,1] = x[1,0,0]
  Tensor p = x.permute({1, 2, 0});                                 // (3, 4, 2)
  EXPECT_EQ(p.contiguous().to_vector()[0 * 8 + 1 * 2 + 1], 13.0);  // p[0,1,1] = x[1,0,1]
  Tensor n = x.narrow(2, 1, 2);                                    // (2, 3, 2)
  EXPECT_EQ(n.contiguous().to_vector(),
            (std::vector<double>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22}));
  EXPECT_EQ(x.reshape({6, -1}).shape(), (Shape{6, 4}));
  EXPECT_EQ(x.reshape({6, -1}).storage(), x.storage());  // contiguous: a view
  EXPECT_EQ(t.reshape({-1}).to_vector()[1], 12.0);       // non-contiguous: a copy in order
  auto parts = split(x, {1, 3}, 2);
  EXPECT_EQ(parts[1].shape(), (Shape{2, 3, 3}));
  EXPECT_EQ(concat(parts, 2).to_vector(), x.to_vector());
  EXPECT_EQ(concat({x, x}, 0).shape(), (Shape{4, 3, 4}));
}

TEST(View, UnflattenIsAViewOfAnyStridesAndItsGradientMatchesReshape) {
  // The third of a packed (B, T, 3 C) tensor split into (H, D): reshape would copy, unflatten not.
  Tensor x = iota({2, 3, 12});
  Tensor third = x.narrow(2, 4, 4);  // (2, 3, 4) with row stride 12
  Tensor u = unflatten(third, 2, {2, 2});
  EXPECT_EQ(u.shape(), (Shape{2, 3, 2, 2}));
  EXPECT_EQ(u.storage(), x.storage());
  EXPECT_EQ(u.contiguous().to_vector(), third.reshape({2, 3, 2, 2}).to_vector());
  EXPECT_EQ(unflatten(x, -1, {3, 4}).strides(), (Shape{36, 12, 4, 1}));
  // Gradients of a composition through unflatten + permute against f64 finite differences, the
  // merged gradient a view where its strides allow.
  const Tensor xr = randn64({2, 3, 12}, 3);
  std::vector<testing::TensorFn> fns = {
      [](auto& t) {  // the gradient reaches unflatten permuted: merged by a copy
        auto parts = split(t[0], {4, 4, 4}, 2);
        Tensor a = unflatten(parts[1], 2, {2, 2}).permute({0, 2, 1, 3});
        return mul(a, unflatten(parts[2], 2, {2, 2}).permute({0, 2, 1, 3}));
      },
      [](auto& t) {  // contiguous gradients: merged as views
        auto parts = split(t[0], {4, 4, 4}, 2);
        return mul(unflatten(parts[0], 2, {2, 2}), unflatten(parts[2], 2, {2, 2}));
      }};
  for (auto& f : fns) {
    auto r = gradcheck(f, {xr});
    EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  }
  EXPECT_THAT(
      [&] {
        unflatten(x, 2, {5, 2});
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("does not split dim")));
}

TEST(View, ConcatOrViewIsAViewOfAdjacentPiecesElseACopy) {
  // Row blocks of one buffer, in order: a view; its gradient hands each piece its row block.
  Tensor buf = randn64({7, 3}, 5);
  auto rows = [&](int64_t s, int64_t n) { return buf.narrow(0, s, n); };
  Tensor v = concat_or_view({rows(0, 4), rows(4, 1), rows(5, 2)}, 0);
  EXPECT_EQ(v.storage(), buf.storage());
  EXPECT_TRUE(testing::bit_equal(v, buf));
  // Not in order, with a gap, or not one storage: a copy equal to concat.
  for (const std::vector<Tensor>& xs :
       {std::vector<Tensor>{rows(4, 1), rows(0, 4)}, std::vector<Tensor>{rows(0, 2), rows(3, 2)},
        std::vector<Tensor>{rows(0, 2), clone(rows(2, 2))}}) {
    Tensor c = concat_or_view(xs, 0);
    EXPECT_NE(c.storage(), buf.storage());
    EXPECT_TRUE(testing::bit_equal(c, concat(xs, 0)));
  }
  // Column blocks that make up whole rows form the buffer itself: a view; blocks that leave a
  // column out would be a strided (non-contiguous) whole: a copy.
  EXPECT_EQ(concat_or_view({buf.narrow(1, 0, 1), buf.narrow(1, 1, 2)}, 1).storage(), buf.storage());
  Tensor cols = concat_or_view({buf.narrow(1, 0, 1), buf.narrow(1, 1, 1)}, 1);
  EXPECT_NE(cols.storage(), buf.storage());
  EXPECT_TRUE(testing::bit_equal(cols, buf.narrow(1, 0, 2)));
  // Gradients through the view path: each leaf gets its block, a view of the output gradient.
  Tensor leaf = randn64({7, 3}, 6).set_requires_grad(true);
  std::vector<Tensor> parts = split(leaf, {4, 3}, 0);
  Tensor w = randn64({7, 3}, 7);
  Tensor y = mul(concat_or_view(parts, 0), w);
  EXPECT_EQ(y.shape(), (Shape{7, 3}));
  std::vector<Tensor> g = kiln::grad({y}, {Tensor::full({7, 3}, 1.0, DType::kF64)}, {leaf});
  EXPECT_TRUE(testing::bit_equal(g[0], w));
  // concat's backward hands each piece its row block of the output gradient as a view (no copy).
  Tensor a = randn64({2, 3}, 9).set_requires_grad(true), b = randn64({5, 3}, 10);
  b.set_requires_grad(true);
  Tensor gout = randn64({7, 3}, 11);
  std::vector<Tensor> gab = kiln::grad({concat_or_view({a, b}, 0)}, {gout}, {a, b});
  EXPECT_EQ(gab[0].storage(), gout.storage());
  EXPECT_EQ(gab[1].storage(), gout.storage());
  EXPECT_TRUE(testing::bit_equal(gab[1], gout.narrow(0, 2, 5)));
  auto r = gradcheck(
      [](auto& t) {
        Tensor b = t[0];
        return mul(concat_or_view({b.narrow(0, 0, 2), b.narrow(0, 2, 5)}, 0), b);
      },
      {randn64({7, 3}, 8)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
  EXPECT_THAT(
      [&] {
        concat_or_view({rows(0, 2), buf.narrow(1, 0, 2)}, 0);
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("differ outside dim 0")));
}

TEST(View, CastAndClone) {
  Tensor x = Tensor::from_vector({1.0, 1.0 + 1.0 / 512, -3.25}, {3});
  EXPECT_EQ(cast(x, DType::kBF16).to_vector(), (std::vector<double>{1.0, 1.0, -3.25}));
  EXPECT_EQ(cast(x, DType::kI32).to_vector(), (std::vector<double>{1, 1, -3}));
  Tensor c = clone(x);
  EXPECT_NE(c.storage(), x.storage());
  EXPECT_EQ(c.to_vector(), x.to_vector());
}

TEST(View, GradientsMatchFiniteDifferences) {
  const Tensor x = randn64({2, 3, 4}, 1);
  std::vector<testing::TensorFn> fns = {
      [](auto& t) {
        return mul(t[0].reshape({4, 6}), t[0].reshape({4, 6}));
      },
      [](auto& t) { return scale(t[0].transpose(0, 2), 2.0); },
      [](auto& t) {
        return mul(t[0].permute({2, 0, 1}), t[0].permute({2, 0, 1}));
      },
      [](auto& t) { return scale(t[0].narrow(1, 1, 2), 3.0); },
      [](auto& t) {
        auto p = split(t[0], {1, 2, 1}, 2);
        return add(scale(p[0], 2.0), mul(p[2], p[2]));  // p[1] unused: zero gradient there
      },
      [](auto& t) {
        return concat({t[0], scale(t[0], -1.0)}, 1);
      },
      [](auto& t) { return mul(contiguous(t[0].transpose(1, 2)), clone(t[0]).transpose(1, 2)); },
      [](auto& t) { return cast(cast(t[0], DType::kF32), DType::kF64); },
  };
  for (size_t i = 0; i < fns.size(); ++i) {
    auto r = gradcheck(fns[i], {x});
    // The f32 round trip rounds x, so its finite differences see steps of 1e-6 quantised to f32
    // (~6e-8 relative): checked separately below with a looser bound for that reason.
    if (i == 7) {
      EXPECT_LE(r.max_rel_error, 0.2) << r.worst;
      continue;
    }
    EXPECT_LE(r.max_rel_error, 1e-6) << "fn " << i << ": " << r.worst;
  }
}

TEST(View, CastBackwardIsIdentityInTheInputDtype) {
  Tensor x = randn64({5}, 2).set_requires_grad(true);
  Tensor y = cast(x, DType::kF32);
  EXPECT_EQ(y.dtype(), DType::kF32);
  y.backward(Tensor::full({5}, 1.5, DType::kF32));
  EXPECT_EQ(x.grad().dtype(), DType::kF64);
  EXPECT_EQ(x.grad().to_vector(), std::vector<double>(5, 1.5));
}

TEST(View, BadInputIsAClearError) {
  Tensor x = Tensor::zeros({2, 3});
  EXPECT_THAT(
      [&] {
        x.reshape({4, 2});
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("has 6 elements, [4, 2] needs 8")));
  EXPECT_THAT(
      [&] {
        x.reshape({-1, -1});
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("more than one -1")));
  EXPECT_THAT([&] { x.transpose(0, 2); },
              ::testing::ThrowsMessage<Error>(HasSubstr("dim 2 out of range")));
  EXPECT_THAT([&] { x.narrow(1, 2, 2); },
              ::testing::ThrowsMessage<Error>(HasSubstr("out of range for dim 1")));
  EXPECT_THAT(
      [&] {
        split(x, {1, 1}, 1);
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("sizes sum to 2")));
  EXPECT_THAT(
      [&] {
        concat({x, Tensor::zeros({2, 4})}, 0);
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("differ outside dim 0")));
  // Mixed dtypes and devices: the message names both tensors, dtype and device included.
  EXPECT_THAT(
      [&] {
        concat({x, Tensor::zeros({2, 3}, DType::kF64)}, 0);
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("concat: f64[2, 3] cpu does not match f32[2, 3] cpu")));
  EXPECT_THAT(
      [&] {
        concat({x, Tensor::zeros({2, 3}, DType::kBF16)}, 1);
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("concat: bf16[2, 3] cpu does not match f32[2, 3] cpu")));
  EXPECT_THAT(
      [&] {
        concat({x, testing::fake_cuda_tensor({2, 3})}, 0);
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("concat: f32[2, 3] cuda:0 does not match f32[2, 3] cpu")));
  EXPECT_THAT(
      [&] {
        concat({testing::fake_cuda_tensor({2, 3}), x}, 0);
      },
      ::testing::ThrowsMessage<Error>(
          HasSubstr("concat: f32[2, 3] cpu does not match f32[2, 3] cuda:0")));
  EXPECT_THAT([&] { x.permute({0, 0}); }, ::testing::ThrowsMessage<Error>(HasSubstr("repeated")));
}

}  // namespace
}  // namespace kiln
