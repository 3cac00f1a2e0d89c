// The conjugate pairs, the vocab-parallel embedding and the vocab-parallel classifier + loss,
// each alone under real MPI processes (ctest: mpirun -np 2 and -np 4). Every rank feeds values
// that depend on its rank, and the expected forward and backward results are written out by hand
// (sums over ranks of known values), so a wrong chunk, order or a missing collective shows. The
// vocab-parallel ops are also checked against the single-process ops on the whole weight and, in
// f64, against finite differences of the global loss.
#include "parallel/tensor_parallel/mappings.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/ops/cross_entropy.h"
#include "core/ops/embedding.h"
#include "core/ops/reduce.h"
#include "core/random.h"
#include "parallel/file_comm.h"
#include "parallel/tensor_parallel/vocab_parallel.h"
#include "parallel/world.h"

namespace kiln::parallel::tp {
namespace {

class TpMappingsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto c = make_world_comm(detect_world());
    ASSERT_TRUE(c.ok()) << c.status().message();
    comm_ = c->release();
  }
  static Communicator* comm_;
  int r() const { return comm_->rank(); }
  int n() const { return comm_->size(); }
};
Communicator* TpMappingsTest::comm_ = nullptr;

// Rank r's value at flat index i of its input (and, with `g`, of its upstream gradient).
double val(int r, int64_t i, bool g = false) { return (g ? 10.0 : 1.0) * (r + 1) + 0.125 * i; }

Tensor ranked(int r, const Shape& s, bool g = false) {
  int64_t numel = 1;
  for (int64_t d : s) numel *= d;
  std::vector<double> v(numel);
  for (int64_t i = 0; i < numel; ++i) v[i] = val(r, i, g);
  return Tensor::from_vector(v, s, DType::kF64).set_requires_grad(!g);
}

// backward of out with rank r's upstream gradient ranked(r, out.shape(), true); returns x.grad.
Tensor grad_of(const Tensor& x, const Tensor& out, int r) {
  out.backward(ranked(r, out.shape(), true));
  return x.grad();
}

TEST_F(TpMappingsTest, CopyToTpIsIdentityForwardAndAllReduceBackward) {
  ASSERT_GT(n(), 1) << "run under mpirun -np 2 or -np 4";
  Tensor x = ranked(r(), {2, 3});
  Tensor y = copy_to_tp(x, *comm_);
  Tensor g = grad_of(x, y, r());
  for (int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(y.to_vector()[i], val(r(), i));
    double want = 0;
    for (int q = 0; q < n(); ++q) want += val(q, i, true);
    EXPECT_EQ(g.to_vector()[i], want) << i;
  }
}

TEST_F(TpMappingsTest, ReduceFromTpIsAllReduceForwardAndIdentityBackward) {
  Tensor x = ranked(r(), {2, 3});
  Tensor y = reduce_from_tp(x, *comm_);
  Tensor g = grad_of(x, y, r());
  for (int64_t i = 0; i < 6; ++i) {
    double want = 0;
    for (int q = 0; q < n(); ++q) want += val(q, i);
    EXPECT_EQ(y.to_vector()[i], want);
    EXPECT_EQ(g.to_vector()[i], val(r(), i, true));
  }
  EXPECT_TRUE(x.to_vector() == ranked(r(), {2, 3}).to_vector()) << "the input was changed";
}

// (B, T, C) = (2, 3 per rank, 2): the sequence dim is 1, so rank q's chunk is interleaved.
TEST_F(TpMappingsTest, GatherFromSequenceIsAllGatherForwardAndReduceScatterBackward) {
  const int64_t b = 2, t = 3, c = 2, tt = t * n();
  Tensor x = ranked(r(), {b, t, c});
  Tensor y = gather_from_sequence(x, 1, *comm_);
  ASSERT_EQ(y.shape(), (Shape{b, tt, c}));
  Tensor g = grad_of(x, y, r());
  const std::vector<double> yv = y.to_vector(), gv = g.to_vector();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < tt; ++s)
      for (int64_t k = 0; k < c; ++k) {
        const int q = static_cast<int>(s / t);  // the rank whose chunk holds position s
        EXPECT_EQ(yv[(i * tt + s) * c + k], val(q, (i * t + s % t) * c + k));
      }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < t; ++s)
      for (int64_t k = 0; k < c; ++k) {
        double want = 0;  // every rank's upstream gradient at my chunk's positions
        for (int q = 0; q < n(); ++q) want += val(q, (i * tt + r() * t + s) * c + k, true);
        EXPECT_EQ(gv[(i * t + s) * c + k], want);
      }
}

TEST_F(TpMappingsTest, ReduceScatterToSequenceIsReduceScatterForwardAndAllGatherBackward) {
  const int64_t b = 2, t = 2, c = 3, tt = t * n();
  Tensor x = ranked(r(), {b, tt, c});
  Tensor y = reduce_scatter_to_sequence(x, 1, *comm_);
  ASSERT_EQ(y.shape(), (Shape{b, t, c}));
  Tensor g = grad_of(x, y, r());
  const std::vector<double> yv = y.to_vector(), gv = g.to_vector();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < t; ++s)
      for (int64_t k = 0; k < c; ++k) {
        double want = 0;
        for (int q = 0; q < n(); ++q) want += val(q, (i * tt + r() * t + s) * c + k);
        EXPECT_EQ(yv[(i * t + s) * c + k], want);
      }
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < tt; ++s)
      for (int64_t k = 0; k < c; ++k)
        EXPECT_EQ(gv[(i * tt + s) * c + k],
                  val(static_cast<int>(s / t), (i * t + s % t) * c + k, true));
}

TEST_F(TpMappingsTest, ScatterToSequenceKeepsTheChunkAndGathersBackward) {
  const int64_t b = 2, t = 2, c = 1, tt = t * n();
  Tensor x = ranked(0, {b, tt, c});  // the same input on every rank, as before a scatter
  Tensor y = scatter_to_sequence(x, 1, *comm_);
  Tensor g = grad_of(x, y, r());
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < t; ++s)
      EXPECT_EQ(y.to_vector()[i * t + s], val(0, i * tt + r() * t + s));
  for (int64_t i = 0; i < b; ++i)
    for (int64_t s = 0; s < tt; ++s)
      EXPECT_EQ(g.to_vector()[i * tt + s], val(static_cast<int>(s / t), i * t + s % t, true));
}

TEST_F(TpMappingsTest, GatherFromTpGathersTheLastDimAndKeepsTheChunkBackward) {
  const int64_t rows = 3, v = 2, vv = v * n();
  Tensor x = ranked(r(), {rows, v});
  Tensor y = gather_from_tp(x, -1, *comm_);
  Tensor g = grad_of(x, y, r());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < vv; ++j)
      EXPECT_EQ(y.to_vector()[i * vv + j], val(static_cast<int>(j / v), i * v + j % v));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < v; ++j)
      EXPECT_EQ(g.to_vector()[i * v + j], val(r(), i * vv + r() * v + j, true));
}

// The whole (V, C) weight, the same on every rank; rank r holds rows [r V/tp, (r+1) V/tp).
Tensor full_weight(int64_t v, int64_t c) {
  Generator gen(11);
  return randn({v, c}, gen, DType::kF64, Device::cpu(), 0.0, 1.0);
}
Tensor my_rows(const Tensor& full, int r, int n) {
  const int64_t rows = full.size(0) / n;
  return full.narrow(0, r * rows, rows).contiguous().set_requires_grad(true);
}

TEST_F(TpMappingsTest, VocabParallelEmbeddingEqualsTheWholeLookup) {
  const int64_t v = 4 * n(), c = 3;
  Tensor full = full_weight(v, c).set_requires_grad(true);
  Tensor mine = my_rows(full.detach(), r(), n());
  Tensor ids = Tensor::from_ints({0, v - 1, 3, 5, 1, v / 2, 2, v - 1}, {2, 4});
  Tensor ref = embedding(full, ids), got = vocab_parallel_embedding(mine, ids, *comm_);
  EXPECT_EQ(got.to_vector(), ref.to_vector());
  Tensor up = ranked(0, {2, 4, c}, true);  // the same upstream gradient on every rank
  ref.backward(up);
  got.backward(up);
  EXPECT_EQ(mine.grad().to_vector(), my_rows(full.grad(), r(), n()).to_vector());
}

TEST_F(TpMappingsTest, VocabParallelCrossEntropyEqualsTheWholeLossAndGradients) {
  const int64_t v = 5 * n(), c = 4, rows = 6;
  Generator gen(5);
  Tensor full = full_weight(v, c).set_requires_grad(true);
  Tensor mine = my_rows(full.detach(), r(), n());
  Tensor x_ref = randn({rows, c}, gen, DType::kF64, Device::cpu(), 0.0, 1.0);
  Tensor x = x_ref.detach().clone().set_requires_grad(true);
  x_ref.set_requires_grad(true);
  Tensor t = Tensor::from_ints({0, v - 1, -100, 7 % v, 2 * n() + 1, v / 2}, {rows});
  Tensor ref = linear_cross_entropy(x_ref, full, t);
  Tensor got = vocab_parallel_cross_entropy(copy_to_tp(x, *comm_), mine, t, *comm_);
  EXPECT_NEAR(got.item(), ref.item(), 1e-12 * std::fabs(ref.item()));
  ref.backward();
  got.backward();
  const auto gx = x.grad().to_vector(), rx = x_ref.grad().to_vector();
  for (size_t i = 0; i < gx.size(); ++i) EXPECT_NEAR(gx[i], rx[i], 1e-12) << "dx " << i;
  const auto gw = mine.grad().to_vector(), rw = my_rows(full.grad(), r(), n()).to_vector();
  for (size_t i = 0; i < gw.size(); ++i) EXPECT_NEAR(gw[i], rw[i], 1e-12) << "dw " << i;
}

TEST_F(TpMappingsTest, VocabParallelCrossEntropyMatchesFiniteDifferences) {
  const int64_t v = 3 * n(), c = 2, rows = 4;
  Tensor mine = my_rows(full_weight(v, c), r(), n());
  Generator gen(9);
  Tensor x = randn({rows, c}, gen, DType::kF64, Device::cpu(), 0.0, 1.0);
  Tensor t = Tensor::from_ints({1, v - 1, 0, v / 2}, {rows});
  Tensor loss = vocab_parallel_cross_entropy(x, mine, t, *comm_);
  loss.backward();
  const std::vector<double> analytic = mine.grad().to_vector();
  // Every rank perturbs one element of its own rows in turn; all ranks evaluate the global loss.
  const double eps = 1e-6;
  for (int owner = 0; owner < n(); ++owner)
    for (int64_t i = 0; i < mine.numel(); ++i) {
      auto eval = [&](double d) {
        Tensor w = mine.detach().clone();
        if (r() == owner) w.data<double>()[i] += d;
        return vocab_parallel_cross_entropy(x, w, t, *comm_).item();
      };
      const double fd = (eval(eps) - eval(-eps)) / (2 * eps);
      if (r() == owner) EXPECT_NEAR(analytic[i], fd, 1e-7) << "rank " << owner << " element " << i;
    }
}

}  // namespace
}  // namespace kiln::parallel::tp
