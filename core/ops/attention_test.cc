// Tests for causal_attention: the fused kernel against a naive f64 triple loop with an explicit
// mask and softmax (fused vs composed), GQA head mapping, shapes and dtypes, gradients against
// finite differences, what the node saves, and bad input.
#include "core/ops/attention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/testing/fake_cuda.h"
#include "core/testing/gradcheck.h"
#include "core/thread_pool.h"

namespace kiln {
namespace {

using testing::gradcheck;
using ::testing::HasSubstr;
using testing::max_scaled_error;
using testing::randn64;
using ::testing::ThrowsMessage;

struct Dims {
  int64_t b, hq, hkv, t, d;
};

// out[b, h, t] = sum_j softmax_j(scale * q[b, h, t] . k[b, g, j], -inf for j > t) v[b, g, j],
// g = h / (Hq / Hkv), written as plainly as possible in f64.
Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  const Dims s{q.size(0), q.size(1), k.size(1), q.size(2), q.size(3)};
  std::vector<double> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  std::vector<double> out(qv.size(), 0.0);
  auto qi = [&](int64_t b, int64_t h, int64_t t, int64_t x) {
    return ((b * s.hq + h) * s.t + t) * s.d + x;
  };
  auto ki = [&](int64_t b, int64_t h, int64_t t, int64_t x) {
    return ((b * s.hkv + h) * s.t + t) * s.d + x;
  };
  for (int64_t b = 0; b < s.b; ++b) {
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t g = h / (s.hq / s.hkv);
      for (int64_t t = 0; t < s.t; ++t) {
        std::vector<double> score(s.t);
        for (int64_t j = 0; j < s.t; ++j) {
          double dot = 0;
          for (int64_t x = 0; x < s.d; ++x) dot += qv[qi(b, h, t, x)] * kv[ki(b, g, j, x)];
          score[j] = j <= t ? scale * dot : -std::numeric_limits<double>::infinity();
        }
        double m = score[0];
        for (double sc : score) m = std::max(m, sc);
        double sum = 0;
        for (double& sc : score) sum += (sc = std::exp(sc - m));
        for (int64_t j = 0; j < s.t; ++j)
          for (int64_t x = 0; x < s.d; ++x)
            out[qi(b, h, t, x)] += score[j] / sum * vv[ki(b, g, j, x)];
      }
    }
  }
  return Tensor::from_vector(out, q.shape(), DType::kF64);
}

struct Qkv {
  Tensor q, k, v;
};
Qkv random_qkv(const Dims& s, uint64_t seed) {
  return {randn64({s.b, s.hq, s.t, s.d}, seed), randn64({s.b, s.hkv, s.t, s.d}, seed + 1),
          randn64({s.b, s.hkv, s.t, s.d}, seed + 2)};
}

TEST(Attention, MatchesNaiveF64) {
  // T = 130 spans three query blocks of 64 (the last one partial).
  for (Dims s : {Dims{2, 4, 2, 7, 5}, Dims{1, 2, 2, 130, 8}, Dims{2, 3, 1, 66, 4}}) {
    Qkv x = random_qkv(s, 10);
    Tensor out = causal_attention(x.q, x.k, x.v);
    EXPECT_EQ(out.shape(), x.q.shape());
    EXPECT_EQ(out.dtype(), DType::kF64);
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
    EXPECT_LE(max_scaled_error(out, naive_attention(x.q, x.k, x.v, scale), 1e-12, 1e-10), 1.0)
        << s.hq << "/" << s.hkv << " T=" << s.t;
    Tensor out2 = causal_attention(x.q, x.k, x.v, 0.37);
    EXPECT_LE(max_scaled_error(out2, naive_attention(x.q, x.k, x.v, 0.37), 1e-12, 1e-10), 1.0);
  }
}

TEST(Attention, F32AndBf16ComputeInF32) {
  const Dims s{2, 4, 2, 70, 16};
  Qkv x = random_qkv(s, 20);
  // Reference on the inputs as the f32 / bf16 tensors hold them.
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Tensor q = x.q.to(dt), k = x.k.to(dt), v = x.v.to(dt);
    Tensor out = causal_attention(q, k, v);
    EXPECT_EQ(out.dtype(), dt);
    EXPECT_EQ(out.shape(), (Shape{2, 4, 70, 16}));
    Tensor ref = naive_attention(q.to(DType::kF64), k.to(DType::kF64), v.to(DType::kF64), 0.25);
    // f32: accumulation over T*D terms, ~1e-6 relative. bf16: the result is rounded to 8 bits
    // of mantissa (relative step 2^-8) after an f32 computation.
    const double rtol = dt == DType::kF32 ? 1e-5 : 1.0 / 256;
    EXPECT_LE(max_scaled_error(out.to(DType::kF64), ref, 1e-5, rtol), 1.0) << dtype_name(dt);
  }
}

TEST(Attention, GqaHeadsShareKv) {
  // With Hkv = 1, every query head equal to head 0 gives the same output as head 0.
  Qkv x = random_qkv({1, 1, 1, 9, 4}, 30);
  Tensor q3 = Tensor::from_vector(
      [&] {
        std::vector<double> v = x.q.to_vector(), r;
        for (int i = 0; i < 3; ++i) r.insert(r.end(), v.begin(), v.end());
        return r;
      }(),
      {1, 3, 9, 4}, DType::kF64);
  std::vector<double> one = causal_attention(x.q, x.k, x.v).to_vector();
  std::vector<double> three = causal_attention(q3, x.k, x.v).to_vector();
  for (int h = 0; h < 3; ++h)
    for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(three[h * one.size() + i], one[i]);
  // First row attends only to itself: out[0] = v[0] exactly whatever q and k hold.
  for (int x4 = 0; x4 < 4; ++x4) EXPECT_DOUBLE_EQ(one[x4], x.v.to_vector()[x4]);
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  auto fn = [](const std::vector<Tensor>& x) { return causal_attention(x[0], x[1], x[2]); };
  // GQA (Hq = 4, Hkv = 2), MHA (Hq = Hkv) across two query blocks of 64 rows, MQA (Hkv = 1).
  // eps = 1e-5 instead of the default 1e-6: the numeric side projects up to 420 outputs onto the
  // random direction, and the f64 round-off of that sum divided by 2 eps dominates the error for
  // gradients near 1e-3 (measured at eps 1e-6: 5.7e-7 for GQA and 3.8e-6 for T = 70, both falling
  // as 1/eps, to 4.9e-8 and 4.5e-7 at 1e-5). The truncation error, O(eps^2), stays far below;
  // the tolerance is unchanged.
  constexpr double kEps = 1e-5;
  for (Dims s : {Dims{2, 4, 2, 6, 3}, Dims{1, 2, 2, 70, 3}, Dims{1, 3, 1, 5, 2}}) {
    Qkv x = random_qkv(s, 40);
    auto r = gradcheck(fn, {x.q, x.k, x.v}, kEps);
    EXPECT_LE(r.max_rel_error, 1e-6) << s.hq << "/" << s.hkv << " T=" << s.t << " " << r.worst;
    std::cout << "[attention gradcheck Hq=" << s.hq << " Hkv=" << s.hkv << " T=" << s.t
              << "] max_rel_error " << r.max_rel_error << "\n";
  }
  Qkv x = random_qkv({1, 2, 1, 5, 4}, 50);
  auto r = gradcheck([](const auto& x) { return causal_attention(x[0], x[1], x[2], 0.9); },
                     {x.q, x.k, x.v}, kEps);
  EXPECT_LE(r.max_rel_error, 1e-6) << r.worst;
}

TEST(Attention, Bf16GradientsHaveInputDtypes) {
  Qkv x = random_qkv({1, 4, 2, 8, 4}, 60);
  Tensor q = x.q.to(DType::kBF16).set_requires_grad(true);
  Tensor k = x.k.to(DType::kBF16).set_requires_grad(true);
  Tensor v = x.v.to(DType::kBF16).set_requires_grad(true);
  causal_attention(q, k, v).backward(Tensor::full({1, 4, 8, 4}, 1.0, DType::kBF16));
  EXPECT_EQ(q.grad().dtype(), DType::kBF16);
  EXPECT_EQ(k.grad().shape(), (Shape{1, 2, 8, 4}));
  EXPECT_EQ(v.grad().dtype(), DType::kBF16);
  // With an all-ones output gradient, sum over t of dv = sum of all probabilities = T per
  // query head, times 2 query heads per kv head.
  std::vector<double> gv = v.grad().to_vector();
  double total = 0;
  for (double g : gv) total += g;
  EXPECT_NEAR(total, 4 * 8 * 4, 0.5);
}

TEST(Attention, IndependentOfThreadCount) {
  // 1 thread: heads in order, OpenBLAS threads each GEMM; 4 threads: heads in parallel with
  // single-threaded GEMMs. Both must give the same bits, forward and backward.
  Qkv x = random_qkv({2, 4, 2, 100, 32}, 80);
  auto run = [&] {
    Tensor q = x.q.to(DType::kF32).set_requires_grad(true);
    Tensor k = x.k.to(DType::kF32).set_requires_grad(true);
    Tensor v = x.v.to(DType::kF32).set_requires_grad(true);
    Tensor out = causal_attention(q, k, v);
    out.backward(x.q.to(DType::kF32));
    return std::vector<Tensor>{out, q.grad(), k.grad(), v.grad()};
  };
  const int prev = num_threads();
  set_num_threads(1);
  std::vector<Tensor> one = run();
  set_num_threads(4);
  std::vector<Tensor> four = run();
  set_num_threads(prev);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(testing::bit_equal(one[i], four[i])) << i;
}

TEST(Attention, SavesNoTxTMatrix) {
  Qkv x = random_qkv({1, 1, 1, 100, 4}, 70);
  Tensor q = x.q.clone().set_requires_grad(true);
  Tensor out = causal_attention(q, x.k, x.v);
  ASSERT_NE(out.grad_fn(), nullptr);
  for (const Tensor& s : out.grad_fn()->saved) EXPECT_LT(s.numel(), 100 * 100) << s.str();
}

TEST(Attention, BadInputIsAClearError) {
  Tensor q = Tensor::zeros({1, 4, 5, 8}), k = Tensor::zeros({1, 2, 5, 8});
  EXPECT_THAT(
      [&] {
        causal_attention(Tensor::zeros({4, 5, 8}), k, k);
      },
      ThrowsMessage<Error>(HasSubstr("causal_attention: q (B, Hq, T, D) must have 4 dims")));
  EXPECT_THAT(
      [&] {
        causal_attention(q, Tensor::zeros({2, 5, 8}), k);
      },
      ThrowsMessage<Error>(HasSubstr("k (B, Hkv, T, D) must have 4 dims")));
  Tensor k3 = Tensor::zeros({1, 3, 5, 8});
  EXPECT_THAT([&] { causal_attention(q, k3, k3); },
              ThrowsMessage<Error>(HasSubstr("(Hq = 4) must be a multiple of the number of kv "
                                             "heads (Hkv = 3)")));
  EXPECT_THAT(
      [&] {
        causal_attention(q, k, Tensor::zeros({1, 2, 5, 7}));
      },
      ThrowsMessage<Error>(HasSubstr("must have the same shape")));
  Tensor k_d = Tensor::zeros({1, 2, 5, 4});
  EXPECT_THAT([&] { causal_attention(q, k_d, k_d); },
              ThrowsMessage<Error>(HasSubstr("does not match k f32[1, 2, 5, 4]")));
  Tensor qi = Tensor::zeros({1, 4, 5, 8}, DType::kI32);
  EXPECT_THAT([&] { causal_attention(qi, k, k); },
              ThrowsMessage<Error>(HasSubstr("causal_attention: expected a floating tensor")));
  EXPECT_THAT([&] { causal_attention(q, k.to(DType::kF64), k); },
              ThrowsMessage<Error>(HasSubstr("dtype mismatch")));
  // CUDA tensors without a CUDA backend (attention_cuda_test.cc covers the GPU itself).
  if (!cuda_available()) {
    Tensor qc = testing::fake_cuda_tensor({1, 4, 5, 8});
    Tensor kc = testing::fake_cuda_tensor({1, 2, 5, 8});
    EXPECT_THAT([&] { causal_attention(qc, kc, kc); },
                ThrowsMessage<Error>(HasSubstr("is a CUDA tensor but the CUDA backend is not "
                                               "available")));
  }
}

}  // namespace
}  // namespace kiln
