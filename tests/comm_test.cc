// Every collective of the CPU world communicator against answers computed by hand, on whatever
// backend the launch gives: the file communicator under scripts/launch_local.sh, MPI under
// mpirun (ctest runs both, with 3 ranks so that no power-of-two shortcut hides a bug). Each rank
// contributes values that depend on its rank, so a wrong source, chunk or order shows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "parallel/file_comm.h"
#include "parallel/world.h"

namespace kiln::parallel {
namespace {

class CommTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = detect_world();
    auto c = make_world_comm(world_);
    ASSERT_TRUE(c.ok()) << c.status().message();
    comm_ = c->release();
  }
  static World world_;
  static Communicator* comm_;
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
};
World CommTest::world_;
Communicator* CommTest::comm_ = nullptr;

// Rank r's element i.
double value(int r, int64_t i) { return (r + 1) * 0.5 + i * 0.25; }

TEST_F(CommTest, BackendAndRanksMatchTheLauncher) {
  ASSERT_GT(world_.size, 1) << "run under scripts/launch_local.sh N or mpirun -np N";
  EXPECT_EQ(size(), world_.size);
  EXPECT_EQ(rank(), world_.rank);
  const char* expected = std::getenv("KILN_COMM_TEST_BACKEND");
  if (expected != nullptr) EXPECT_EQ(comm_->backend(), expected);
}

TEST_F(CommTest, AllReduceSumAvgMaxInEveryDtype) {
  for (DType dt : {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64}) {
    SCOPED_TRACE(dtype_name(dt));
    const int64_t n = 37;
    std::vector<double> mine(n);
    for (int64_t i = 0; i < n; ++i)
      mine[i] = dt == DType::kI32 || dt == DType::kI64 ? (rank() + 1) * 10 + i : value(rank(), i);
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && !is_floating(dt)) continue;
      Tensor t = Tensor::from_vector(mine, {n}, dt);
      comm_->all_reduce(t, op);
      std::vector<double> got = t.to_vector();
      for (int64_t i = 0; i < n; ++i) {
        double want = op == ReduceOp::kMax ? -1e300 : 0;
        for (int r = 0; r < size(); ++r) {
          const double v = dt == DType::kI32 || dt == DType::kI64 ? (r + 1) * 10 + i : value(r, i);
          want = op == ReduceOp::kMax ? std::max(want, v) : want + v;
        }
        if (op == ReduceOp::kAvg) want /= size();
        // The values are multiples of 1/4 below 64: exact in every dtype here, bf16 included
        // (8 significant bits), except the average over 3 ranks, which rounds once.
        const double tol =
            op == ReduceOp::kAvg ? std::fabs(want) * (dt == DType::kBF16 ? 4e-3 : 1e-6) : 0.0;
        ASSERT_NEAR(got[i], want, tol) << "op " << static_cast<int>(op) << " element " << i;
      }
    }
  }
}

TEST_F(CommTest, ReduceScatterGivesEachRankItsChunk) {
  const int64_t chunk = 5;
  std::vector<double> mine(chunk * size());
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(rank(), static_cast<int64_t>(i));
  Tensor in = Tensor::from_vector(mine, {static_cast<int64_t>(mine.size())}, DType::kF32);
  Tensor out = Tensor::empty({chunk}, DType::kF32);
  comm_->reduce_scatter(in, out, ReduceOp::kSum);
  std::vector<double> got = out.to_vector();
  for (int64_t i = 0; i < chunk; ++i) {
    double want = 0;
    for (int r = 0; r < size(); ++r) want += value(r, rank() * chunk + i);
    EXPECT_EQ(got[i], want) << i;
  }
}

TEST_F(CommTest, AllGatherPlacesRankRInChunkR) {
  const int64_t chunk = 4;
  std::vector<double> mine(chunk);
  for (int64_t i = 0; i < chunk; ++i) mine[i] = value(rank(), i);
  Tensor in = Tensor::from_vector(mine, {chunk}, DType::kF64);
  Tensor out = Tensor::empty({chunk * size()}, DType::kF64);
  comm_->all_gather(in, out);
  std::vector<double> got = out.to_vector();
  for (int r = 0; r < size(); ++r)
    for (int64_t i = 0; i < chunk; ++i) EXPECT_EQ(got[r * chunk + i], value(r, i));
}

TEST_F(CommTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < size(); ++root) {
    Tensor t = Tensor::from_vector({rank() * 3.0 + 1, rank() - 9.0, 7.0}, {3}, DType::kI64);
    comm_->broadcast(t, root);
    std::vector<double> got = t.to_vector();
    EXPECT_EQ(got[0], root * 3.0 + 1) << "root " << root;
    EXPECT_EQ(got[1], root - 9.0) << "root " << root;
    EXPECT_EQ(got[2], 7.0);
  }
}

TEST_F(CommTest, SendRecvAroundARingInOrder) {
  const int next = (rank() + 1) % size(), prev = (rank() + size() - 1) % size();
  for (int msg = 0; msg < 3; ++msg) {
    Tensor out = Tensor::from_vector({static_cast<double>(rank() * 100 + msg)}, {1}, DType::kI32);
    Tensor in = Tensor::empty({1}, DType::kI32);
    // Even ranks send first, odd ranks receive first: no deadlock with blocking sends either.
    if (rank() % 2 == 0) {
      comm_->send(out, next);
      comm_->recv(in, prev);
    } else {
      comm_->recv(in, prev);
      comm_->send(out, next);
    }
    EXPECT_EQ(in.item(), prev * 100 + msg);
  }
}

TEST_F(CommTest, SplitFormsGroupsOrderedByKey) {
  // Two groups: even and odd ranks, ordered by descending rank.
  std::unique_ptr<Communicator> sub = comm_->split(rank() % 2, -rank());
  const int group_size = (size() + 1 - rank() % 2) / 2;
  ASSERT_EQ(sub->size(), group_size);
  // Members of my color in descending rank: my position is the count of larger members.
  int larger = 0;
  for (int r = rank() + 2; r < size(); r += 2) ++larger;
  EXPECT_EQ(sub->rank(), larger);
  Tensor t = Tensor::from_vector({static_cast<double>(rank())}, {1}, DType::kF64);
  sub->all_reduce(t, ReduceOp::kSum);
  double want = 0;
  for (int r = rank() % 2; r < size(); r += 2) want += r;
  EXPECT_EQ(t.item(), want);
  sub->barrier();
  comm_->barrier();
}

TEST_F(CommTest, ScalarAllReduceAndBarrierRepeat) {
  // Many small collectives in a row: the file backend deletes files two collectives back, so a
  // long sequence also checks that nothing is deleted too early.
  for (int i = 0; i < 50; ++i) {
    const double s = comm_->all_reduce_scalar(rank() + i, ReduceOp::kSum);
    ASSERT_EQ(s, size() * i + size() * (size() - 1) / 2.0) << i;
    if (i % 10 == 0) comm_->barrier();
  }
}

}  // namespace
}  // namespace kiln::parallel
