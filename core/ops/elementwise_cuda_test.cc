// CUDA elementwise ops against the CPU reference (label gpu; skip without a GPU), on fresh random
// inputs with every CUDA allocation poisoned (NaN) so unwritten output elements fail: add / sub /
// mul / scale / add_scalar over the broadcast patterns and strided inputs (bit-identical to the
// CPU, which rounds the same single f32 operation), their gradients, sum_to (f64 accumulation:
// within 1e-6 of the exact sum, and bit-identical repeats), add_ / mul_ (bit-identical), and
// sum_squares.
#include <gtest/gtest.h>

#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "core/testing/gpu_test_util.h"

namespace kiln {
namespace {

using testing::GpuTest;
using testing::random_tensor;
using testing::same_bits;

using ElementwiseCuda = GpuTest;

const Device kGpu = Device::cuda(0);

struct Pair {
  Shape a, b;
};

const Pair kPatterns[] = {
    {{4, 33, 65}, {4, 33, 65}},  // same shape
    {{4, 33, 65}, {65}},         // row bias
    {{4, 33, 65}, {}},           // 0-dim scalar
    {{4, 1, 65}, {4, 33, 1}},    // both broadcast
    {{1}, {7, 9}},               // a broadcasts
    {{3, 1, 5, 1}, {2, 1, 6}},   // mixed leading dims
    {{1000003}, {1000003}},      // long, odd length
};

Tensor to_gpu(const Tensor& t) { return t.to(kGpu).detach(); }

TEST_F(ElementwiseCuda, BinaryOpsMatchCpuBitForBit) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    for (const Pair& p : kPatterns) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + shape_str(p.a) + " op " + shape_str(p.b));
      Tensor a = random_tensor(p.a, 1, dt), b = random_tensor(p.b, 2, dt);
      Tensor ga = to_gpu(a), gb = to_gpu(b);
      for (int op = 0; op < 3; ++op) {
        Tensor c = op == 0 ? add(a, b) : op == 1 ? sub(a, b) : mul(a, b);
        Tensor g = op == 0 ? add(ga, gb) : op == 1 ? sub(ga, gb) : mul(ga, gb);
        EXPECT_EQ(g.device(), kGpu);
        EXPECT_EQ(g.dtype(), dt);
        EXPECT_TRUE(same_bits(g, c)) << "op " << op;
        KILN_EXPECT_CLOSE(g, c, dt == DType::kBF16 ? 1e-2 : 1e-5, 0.0);
      }
      EXPECT_TRUE(same_bits(scale(ga, -0.37), scale(a, -0.37)));
      EXPECT_TRUE(same_bits(add_scalar(ga, 1.0 / 3), add_scalar(a, 1.0 / 3)));
    }
  }
}

TEST_F(ElementwiseCuda, StridedInputs) {
  Tensor a = random_tensor({6, 40, 50}, 3), b = random_tensor({50, 40}, 4);
  Tensor ga = to_gpu(a), gb = to_gpu(b);
  // a transposed and narrowed, b transposed: no contiguous copies on either side.
  Tensor av = a.narrow(0, 1, 4).transpose(1, 2), bv = b;  // (4, 50, 40) op (50, 40)
  Tensor gav = ga.narrow(0, 1, 4).transpose(1, 2), gbv = gb;
  EXPECT_TRUE(same_bits(mul(gav, gbv), mul(av, bv)));
  EXPECT_TRUE(same_bits(add(gav, gb.transpose(0, 1).transpose(0, 1)), add(av, b)));
  EXPECT_TRUE(same_bits(scale(gav, 2.5), scale(av, 2.5)));
}

TEST_F(ElementwiseCuda, GradientsMatchCpu) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor a = random_tensor({8, 16, 32}, 5, dt), b = random_tensor({16, 1}, 6, dt);
    Tensor ga = to_gpu(a), gb = to_gpu(b);
    for (Tensor* t : {&a, &b, &ga, &gb}) t->set_requires_grad(true);
    Tensor gy = random_tensor({8, 16, 32}, 7, dt);
    auto f = [](const Tensor& x, const Tensor& y) {
      return add_scalar(scale(sub(mul(x, y), add(x, y)), 0.5), 2.0);
    };
    f(a, b).backward(gy);
    f(ga, gb).backward(to_gpu(gy));
    // The broadcast reduction (sum_to) accumulates in f64 on the GPU and in f32 sequentially on
    // the CPU; over 8*32 = 256 terms the CPU's f32 error is < 256 * 2^-24 relative of the terms.
    const double rtol = dt == DType::kBF16 ? 1e-2 : 1e-5;
    KILN_EXPECT_CLOSE(ga.grad(), a.grad(), rtol, rtol * testing::mean_abs(a.grad()));
    KILN_EXPECT_CLOSE(gb.grad(), b.grad(), rtol, rtol * testing::mean_abs(b.grad()));
    EXPECT_EQ(gb.grad().device(), kGpu);
  }
}

TEST_F(ElementwiseCuda, SumToMatchesExactSumAndRepeatsBitIdentically) {
  struct Case {
    Shape in, out;
  };
  const Case cases[] = {
      {{4, 5, 6}, {5, 1}},    {{4, 5, 6}, {6}},      {{4, 5, 6}, {1, 5, 6}},
      {{32768, 768}, {768}},  {{3, 100000}, {3, 1}}, {{2, 3, 4, 5}, {3, 1, 5}},
      {{7, 1, 9}, {1, 1, 9}}, {{100}, {}},
  };
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " " + shape_str(c.in) + " -> " + shape_str(c.out));
      Tensor x = random_tensor(c.in, 8, dt);
      // Exact reference: the CPU op on the same values in f64, then rounded to dt.
      Tensor ref = sum_to(x.to(DType::kF64), c.out).to(dt);
      Tensor gx = to_gpu(x);
      Tensor g1 = sum_to(gx, c.out), g2 = sum_to(gx, c.out);
      EXPECT_EQ(g1.shape(), c.out);
      // f64 accumulation then one rounding to dt: within one rounding of the exact value.
      const double rtol = dt == DType::kBF16 ? 1e-2 : 1e-6;
      KILN_EXPECT_CLOSE(g1, ref, rtol, 1e-10);
      EXPECT_TRUE(same_bits(g1, g2));
    }
  }
}

TEST_F(ElementwiseCuda, InPlaceAddAndMulMatchCpuBitForBit) {
  struct Case {
    DType dst, src;
  };
  // f32 += bf16 / f16 contiguous is AccumulateGrad's vectorised path; {7, 1001} has a tail.
  for (Case c : {Case{DType::kF32, DType::kF32}, Case{DType::kBF16, DType::kF32},
                 Case{DType::kF32, DType::kBF16}, Case{DType::kF16, DType::kF16},
                 Case{DType::kF32, DType::kF16}})
    for (const Shape& shape : {Shape{300, 70}, Shape{7, 1001}}) {
      SCOPED_TRACE(std::string(dtype_name(c.dst)) + " += " + dtype_name(c.src) + " " +
                   shape_str(shape));
      Tensor d = random_tensor(shape, 9, c.dst), s = random_tensor(shape, 10, c.src);
      Tensor gd = to_gpu(d), gs = to_gpu(s);
      add_(d, s, -0.3);
      add_(gd, gs, -0.3);
      EXPECT_TRUE(same_bits(gd, d));
      // strided destination and source
      add_(d.transpose(0, 1), s.transpose(0, 1), 1.7);
      add_(gd.transpose(0, 1), gs.transpose(0, 1), 1.7);
      EXPECT_TRUE(same_bits(gd, d));
      mul_(d, 0.61);
      mul_(gd, 0.61);
      EXPECT_TRUE(same_bits(gd, d));
      mul_(d.narrow(1, 3, 5), -2.0);
      mul_(gd.narrow(1, 3, 5), -2.0);
      EXPECT_TRUE(same_bits(gd, d));
    }
}

TEST_F(ElementwiseCuda, SumSquaresMatchesCpu) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF64}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor x = random_tensor({1234567}, 11, dt);
    const double c = sum_squares(x), g1 = sum_squares(to_gpu(x)), g2 = sum_squares(to_gpu(x));
    EXPECT_NEAR(g1, c, 1e-12 * c);  // both accumulate in f64, in different orders
    EXPECT_EQ(g1, g2);
    Tensor t = to_gpu(random_tensor({50, 60}, 12, dt)).transpose(0, 1);  // strided
    EXPECT_NEAR(sum_squares(t), sum_squares(t.to(Device::cpu())), 1e-12 * sum_squares(t));
  }
}

}  // namespace
}  // namespace kiln
