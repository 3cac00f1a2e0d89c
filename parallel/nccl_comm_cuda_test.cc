// Every collective of the NCCL communicator against answers computed by hand, one rank per GPU
// under `mpirun -np 2` (label gpu): all_reduce (sum, avg, max; f32, bf16, f64, i32),
// reduce_scatter, all_gather, broadcast from each root, send/recv both ways, barrier, split, and
// async work waited on later. Each rank contributes values that depend on its rank, so a wrong
// source, chunk or order shows. Skips without enough GPUs (one per rank: NCCL refuses two ranks on
// one device), and fails instead under KILN_REQUIRE_GPU=1.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/cuda/runtime.h"
#include "core/testing/require_gpu.h"
#include "parallel/communicator.h"

namespace kiln::parallel {
namespace {

std::unique_ptr<Communicator> g_world;  // MPI (bootstrap)
std::unique_ptr<Communicator> g_nccl;

double value(int r, int64_t i) { return (r + 1) * 0.5 + i * 0.25; }

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g_world) g_world = make_cpu_world();
    ASSERT_GE(g_world->size(), 2) << "run under mpirun -np 2 (or more)";
    const int devices = cuda_available() ? cuda::device_count() : 0;
    if (devices < g_world->size())
      KILN_GPU_SKIP("NCCL needs one GPU per rank: fewer GPUs visible than ranks");
    if (!g_nccl) {
      auto c = make_nccl(*g_world, g_world->rank() % devices);
      ASSERT_TRUE(c.ok()) << c.status().message();
      g_nccl = std::move(*c);
    }
  }
  int rank() const { return g_nccl->rank(); }
  int size() const { return g_nccl->size(); }
  Device gpu() const { return g_nccl->device(); }
  Tensor on_gpu(const std::vector<double>& v, DType dt) const {
    return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, dt).to(gpu());
  }
  static std::vector<double> host(const Tensor& t) {
    cuda::synchronize();
    return t.to(Device::cpu()).to_vector();
  }
};

TEST_F(NcclTest, RanksAndBackend) {
  EXPECT_EQ(g_nccl->backend(), "nccl");
  EXPECT_EQ(rank(), g_world->rank());
  EXPECT_EQ(size(), g_world->size());
  EXPECT_TRUE(gpu().is_cuda());
}

TEST_F(NcclTest, AllReduceSumAvgMaxInEveryDtype) {
  for (DType dt : {DType::kF32, DType::kF64, DType::kBF16, DType::kI32}) {
    SCOPED_TRACE(dtype_name(dt));
    const bool integer = dt == DType::kI32;
    const int64_t n = 1031;  // not a multiple of any vector width
    auto val = [&](int r, int64_t i) {
      return integer ? (r + 1) * 10.0 + i % 97 : value(r, i % 64);
    };
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
      if (op == ReduceOp::kAvg && integer) continue;
      std::vector<double> mine(n);
      for (int64_t i = 0; i < n; ++i) mine[i] = val(rank(), i);
      Tensor t = on_gpu(mine, dt);
      g_nccl->all_reduce(t, op);
      const std::vector<double> got = host(t);
      for (int64_t i = 0; i < n; ++i) {
        double want = op == ReduceOp::kMax ? -1e300 : 0;
        for (int r = 0; r < size(); ++r)
          want = op == ReduceOp::kMax ? std::max(want, val(r, i)) : want + val(r, i);
        if (op == ReduceOp::kAvg) want /= size();
        // The values are multiples of 1/8 below 300: exact in every dtype here but bf16, where
        // the sum is rounded once to 8 bits of mantissa.
        const double tol = dt == DType::kBF16 ? std::abs(want) * (1.0 / 128) : 0.0;
        ASSERT_NEAR(got[i], want, tol) << "op " << static_cast<int>(op) << " element " << i;
      }
    }
  }
}

TEST_F(NcclTest, ReduceScatterGivesEachRankItsChunk) {
  const int64_t n = 129;
  std::vector<double> mine(n * size());
  for (size_t i = 0; i < mine.size(); ++i) mine[i] = value(rank(), static_cast<int64_t>(i));
  Tensor in = on_gpu(mine, DType::kF32);
  Tensor out = Tensor::zeros({n}, DType::kF32, gpu());
  g_nccl->reduce_scatter(in, out, ReduceOp::kSum);
  const std::vector<double> got = host(out);
  for (int64_t i = 0; i < n; ++i) {
    double want = 0;
    for (int r = 0; r < size(); ++r) want += value(r, rank() * n + i);
    ASSERT_EQ(got[i], want) << "element " << i;
  }
}

TEST_F(NcclTest, AllGatherPlacesRankRInChunkR) {
  const int64_t n = 77;
  std::vector<double> mine(n);
  for (int64_t i = 0; i < n; ++i) mine[i] = value(rank(), i);
  Tensor in = on_gpu(mine, DType::kF32);
  Tensor out = Tensor::zeros({n * size()}, DType::kF32, gpu());
  g_nccl->all_gather(in, out);
  const std::vector<double> got = host(out);
  for (int r = 0; r < size(); ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[r * n + i], value(r, i)) << r << " " << i;
}

TEST_F(NcclTest, BroadcastFromEveryRoot) {
  for (int root = 0; root < size(); ++root) {
    std::vector<double> mine(50);
    for (int64_t i = 0; i < 50; ++i) mine[i] = value(rank(), i);
    Tensor t = on_gpu(mine, DType::kF32);
    g_nccl->broadcast(t, root);
    const std::vector<double> got = host(t);
    for (int64_t i = 0; i < 50; ++i) ASSERT_EQ(got[i], value(root, i)) << "root " << root;
  }
}

TEST_F(NcclTest, SendRecvAroundARing) {
  const int next = (rank() + 1) % size(), prev = (rank() + size() - 1) % size();
  std::vector<double> mine(33);
  for (int64_t i = 0; i < 33; ++i) mine[i] = value(rank(), i);
  Tensor out = on_gpu(mine, DType::kF32), in = Tensor::zeros({33}, DType::kF32, gpu());
  if (rank() % 2 == 0) {
    g_nccl->send(out, next);
    g_nccl->recv(in, prev);
  } else {
    g_nccl->recv(in, prev);
    g_nccl->send(out, next);
  }
  const std::vector<double> got = host(in);
  for (int64_t i = 0; i < 33; ++i) ASSERT_EQ(got[i], value(prev, i));
}

TEST_F(NcclTest, AsyncWorkCompletesAfterWait) {
  std::vector<Tensor> ts;
  std::vector<std::unique_ptr<Work>> works;
  for (int k = 0; k < 4; ++k) {
    ts.push_back(on_gpu(std::vector<double>(256, rank() + k), DType::kF32));
    works.push_back(g_nccl->all_reduce_async(ts.back(), ReduceOp::kSum));
  }
  for (auto& w : works) w->wait();
  for (int k = 0; k < 4; ++k) {
    double want = 0;
    for (int r = 0; r < size(); ++r) want += r + k;
    for (double v : host(ts[k])) ASSERT_EQ(v, want) << "work " << k;
  }
  g_nccl->barrier();
}

TEST_F(NcclTest, SplitFormsGroupsOrderedByKey) {
  // One group per rank (color = rank): each sub-communicator has one member; and one group of
  // everyone with the order reversed by key.
  std::unique_ptr<Communicator> rev = g_nccl->split(0, size() - 1 - rank());
  EXPECT_EQ(rev->size(), size());
  EXPECT_EQ(rev->rank(), size() - 1 - rank());
  Tensor in = on_gpu({static_cast<double>(rank())}, DType::kF32);
  Tensor out = Tensor::zeros({size()}, DType::kF32, gpu());
  rev->all_gather(in, out);
  const std::vector<double> got = host(out);
  for (int r = 0; r < size(); ++r) EXPECT_EQ(got[r], size() - 1 - r);
}

}  // namespace
}  // namespace kiln::parallel

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  kiln::parallel::g_nccl.reset();
  kiln::parallel::g_world.reset();
  return rc;
}
