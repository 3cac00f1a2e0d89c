// Tests for add / sub / mul / scale / sum_to: values, broadcasting, gradients, bad input.
#include "core/ops/elementwise.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/check.h"
#include "core/testing/gradcheck.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::randn64;

TEST(Elementwise, ValuesAndBroadcastShapes) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({10, 20, 30}, {3});
  EXPECT_EQ(add(a, b).to_vector(), (std::vector<double>{11, 22, 33, 14, 25, 36}));
  EXPECT_EQ(sub(a, b).to_vector(), (std::vector<double>{-9, -18, -27, -6, -15, -24}));
  Tensor c = Tensor::from_vector({2, 3}, {2, 1});
  EXPECT_EQ(mul(a, c).to_vector(), (std::vector<double>{2, 4, 6, 12, 15, 18}));
  EXPECT_EQ(scale(a, 0.5).to_vector(), (std::vector<double>{0.5, 1, 1.5, 2, 2.5, 3}));
  EXPECT_EQ(add_scalar(a, 1).to_vector(), (std::vector<double>{2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(broadcast_shapes("t", {4, 1, 3}, {2, 1}), (Shape{4, 2, 3}));
  EXPECT_EQ(add(Tensor::zeros({5, 1, 3}), Tensor::zeros({4, 1})).shape(), (Shape{5, 4, 3}));
  EXPECT_EQ(sum_to(Tensor::full({4, 2, 3}, 1.0), {2, 1}).to_vector(),
            (std::vector<double>{12, 12}));
}

TEST(Elementwise, Bf16ComputesInF32AndRounds) {
  Tensor a = Tensor::from_vector({1.0, 3.0}, {2}, DType::kBF16);
  Tensor b = Tensor::from_vector({1.0 / 256, 1.0}, {2}, DType::kBF16);
  Tensor c = add(a, b);
  EXPECT_EQ(c.dtype(), DType::kBF16);
  // 1 + 1/256 is not representable in bf16 (8 bits of mantissa): rounds to even, 1.0.
  EXPECT_EQ(c.to_vector(), (std::vector<double>{1.0, 4.0}));
}

TEST(Elementwise, GradientsMatchFiniteDifferences) {
  for (auto [sa, sb] : std::vector<std::pair<Shape, Shape>>{
           {{3, 4}, {3, 4}}, {{2, 3, 4}, {4}}, {{2, 1, 4}, {3, 1}}, {{3, 4}, {}}}) {
    Tensor a = randn64(sa, 1), b = randn64(sb, 2);
    for (auto fn : std::vector<testing::TensorFn>{
             [](auto& x) { return add(x[0], x[1]); }, [](auto& x) { return sub(x[0], x[1]); },
             [](auto& x) { return mul(x[0], x[1]); },
             [](auto& x) { return scale(mul(x[0], x[1]), -1.7); },
             [](auto& x) { return add_scalar(x[0], 0.3); }}) {
      auto r = gradcheck(fn, {a, b});
      EXPECT_LE(r.max_rel_error, 1e-6) << shape_str(sa) << " " << shape_str(sb) << " " << r.worst;
    }
  }
  auto r = gradcheck([](auto& x) { return sum_to(x[0], {3, 1}); }, {randn64({2, 3, 5}, 3)});
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
}

TEST(Elementwise, BadInputIsAClearError) {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4});
  EXPECT_THAT([&] { add(a, b); },
              ::testing::ThrowsMessage<Error>(HasSubstr("[2, 3] and [4] do not broadcast")));
  EXPECT_THAT(
      [&] {
        mul(a, Tensor::zeros({2, 3}, DType::kF64));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("dtype mismatch")));
  EXPECT_THAT(
      [&] {
        add(a, Tensor::zeros({2, 3}, DType::kI32));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("expected a floating tensor")));
  EXPECT_THAT([&] { add(a, Tensor()); },
              ::testing::ThrowsMessage<Error>(HasSubstr("undefined tensor")));
  EXPECT_THAT(
      [&] {
        add(a, Tensor::zeros({2, 3}, DType::kF32, Device::cuda(0)));
      },
      ::testing::ThrowsMessage<Error>(HasSubstr("cuda")));
}

}  // namespace
}  // namespace kiln
