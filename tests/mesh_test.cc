// parallel::Mesh under mpirun -np 8 (ctest: mpi_mesh_np8): for every ordered factorisation
// dp x tp x pp of 8 (all ten), each rank's coordinates follow the documented rank order (tp
// fastest, then dp, then pp: parallel/world.h), and the all-reduce of each group (world, dp, tp,
// pp) sums exactly over the ranks of that group, which it lists in the order of its coordinate.
// Every expected value is computed here from a table of the documented order (nested loops with pp
// outermost and tp innermost, the k-th triple being rank k), never from ParallelDims or the Mesh.
// Rank r contributes 2^r, so any missing, extra or doubled rank changes the sum's bits.
#include "parallel/mesh.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <vector>

#include "parallel/file_comm.h"
#include "parallel/world.h"

namespace kiln::parallel {
namespace {

constexpr int kWorld = 8;

struct Coord {
  int dp, tp, pp;
};

// The documented rank order: rank = index of (pp, dp, tp) counted with tp fastest, then dp, then
// pp.
std::vector<Coord> documented_order(int dp, int tp, int pp) {
  std::vector<Coord> out;
  for (int p = 0; p < pp; ++p)
    for (int d = 0; d < dp; ++d)
      for (int t = 0; t < tp; ++t) out.push_back({d, t, p});
  return out;
}

// Every ordered (dp, tp, pp) with dp * tp * pp == n.
std::vector<std::array<int, 3>> factorisations(int n) {
  std::vector<std::array<int, 3>> out;
  for (int dp = 1; dp <= n; ++dp)
    for (int tp = 1; tp <= n; ++tp)
      if (n % (dp * tp) == 0) out.push_back({dp, tp, n / (dp * tp)});
  return out;
}

enum class Group { kWorld, kDp, kTp, kPp };
const char* name(Group g) {
  return g == Group::kWorld ? "world" : g == Group::kDp ? "dp" : g == Group::kTp ? "tp" : "pp";
}

// The ranks of `me`'s group, in the order of the group's own coordinate: those whose other two
// coordinates equal mine.
std::vector<int> members(const std::vector<Coord>& table, int me, Group g) {
  std::vector<int> out;
  const Coord m = table[me];
  for (int r = 0; r < static_cast<int>(table.size()); ++r) {
    const Coord c = table[r];
    const bool same = g == Group::kWorld ? true
                      : g == Group::kDp  ? c.tp == m.tp && c.pp == m.pp
                      : g == Group::kTp  ? c.dp == m.dp && c.pp == m.pp
                                         : c.dp == m.dp && c.tp == m.tp;
    if (same) out.push_back(r);
  }
  // Within a group exactly one coordinate varies; the table lists it increasing with the rank, so
  // `out` is already in coordinate order (checked: the coordinate of out[i] is i).
  for (size_t i = 0; i < out.size() && g != Group::kWorld; ++i) {
    const Coord c = table[out[i]];
    const int own = g == Group::kDp ? c.dp : g == Group::kTp ? c.tp : c.pp;
    EXPECT_EQ(own, static_cast<int>(i)) << "test table";
  }
  return out;
}

Communicator& group_of(const Mesh& mesh, Group g) {
  return g == Group::kWorld ? mesh.world()
         : g == Group::kDp  ? mesh.dp()
         : g == Group::kTp  ? mesh.tp()
                            : mesh.pp();
}

class MeshTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    world_ = detect_world();
    auto c = make_world_comm(world_);
    ASSERT_TRUE(c.ok()) << c.status().message();
    comm_ = c->release();
  }
  static World world_;
  static Communicator* comm_;
};
World MeshTest::world_;
Communicator* MeshTest::comm_ = nullptr;

// One mesh: coordinates, then for every group its size, this rank's place, the all-reduce of 2^r
// and the all-gather of the ranks (the group's order).
void check_mesh(const Mesh& mesh, int dp, int tp, int pp, int me) {
  const std::vector<Coord> table = documented_order(dp, tp, pp);
  ASSERT_EQ(static_cast<int>(table.size()), kWorld);
  EXPECT_EQ(mesh.rank(), me);
  EXPECT_EQ(mesh.dp_rank(), table[me].dp);
  EXPECT_EQ(mesh.tp_rank(), table[me].tp);
  EXPECT_EQ(mesh.pp_rank(), table[me].pp);
  for (Group g : {Group::kWorld, Group::kDp, Group::kTp, Group::kPp}) {
    SCOPED_TRACE(name(g));
    const std::vector<int> want = members(table, me, g);
    Communicator& c = group_of(mesh, g);
    ASSERT_EQ(c.size(), static_cast<int>(want.size()));
    int mine = -1;
    for (size_t i = 0; i < want.size(); ++i)
      if (want[i] == me) mine = static_cast<int>(i);
    EXPECT_EQ(c.rank(), mine);
    double sum = 0;
    for (int r : want) sum += std::ldexp(1.0, r);  // exact: distinct powers of two
    Tensor t = Tensor::from_vector({std::ldexp(1.0, me)}, {1}, DType::kF64);
    c.all_reduce(t);
    EXPECT_EQ(t.item(), sum) << "all-reduce over the " << name(g) << " group";
    Tensor in = Tensor::from_vector({static_cast<double>(me)}, {1}, DType::kI64);
    Tensor out = Tensor::empty({static_cast<int64_t>(want.size())}, DType::kI64);
    c.all_gather(in, out);
    std::vector<double> got = out.to_vector();
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(got[i], want[i]) << "member " << i << " of the " << name(g) << " group";
  }
}

TEST_F(MeshTest, EveryFactorisationOf8GroupsSumOverTheirRanks) {
  ASSERT_EQ(world_.size, kWorld) << "run under mpirun -np 8";
  const std::vector<std::array<int, 3>> fs = factorisations(kWorld);
  ASSERT_EQ(fs.size(),
            10u);  // 1x1x8, 1x2x4, 1x4x2, 1x8x1, 2x1x4, 2x2x2, 2x4x1, 4x1x2, 4x2x1, 8x1x1
  for (const auto& [dp, tp, pp] : fs) {
    SCOPED_TRACE(testing::Message() << "dp " << dp << " x tp " << tp << " x pp " << pp);
    auto mesh = Mesh::over(ParallelDims{dp, tp, pp}, *comm_);
    ASSERT_TRUE(mesh.ok()) << mesh.status().message();
    check_mesh(**mesh, dp, tp, pp, comm_->rank());
  }
}

// A hand-written row of the documented order, independent of any formula: 2 x 2 x 2, rank 5 is
// pp 1, dp 0, tp 1; rank 6 is pp 1, dp 1, tp 0.
TEST_F(MeshTest, HandWrittenCoordinatesOf2x2x2) {
  ASSERT_EQ(world_.size, kWorld);
  auto mesh = Mesh::over(ParallelDims{2, 2, 2}, *comm_);
  ASSERT_TRUE(mesh.ok());
  const int want[kWorld][3] = {{0, 0, 0}, {0, 1, 0}, {1, 0, 0}, {1, 1, 0},
                               {0, 0, 1}, {0, 1, 1}, {1, 0, 1}, {1, 1, 1}};  // dp, tp, pp
  const int me = comm_->rank();
  EXPECT_EQ((*mesh)->dp_rank(), want[me][0]);
  EXPECT_EQ((*mesh)->tp_rank(), want[me][1]);
  EXPECT_EQ((*mesh)->pp_rank(), want[me][2]);
}

// Mesh::create (the path the Trainer takes: its own world communicator from the environment).
TEST_F(MeshTest, CreateFromTheWorld) {
  ASSERT_EQ(world_.size, kWorld);
  auto mesh = Mesh::create(ParallelDims{2, 2, 2}, world_, MeshOptions{});
  ASSERT_TRUE(mesh.ok()) << mesh.status().message();
  check_mesh(**mesh, 2, 2, 2, world_.rank);
  auto bad = Mesh::create(ParallelDims{2, 2, 1}, world_, MeshOptions{});
  EXPECT_FALSE(bad.ok());
}

// The gradient norm's model-parallel sum. A model of tp x pp shards (one per (pp, tp), squared norm
// 10 * pp + tp + 1) and one tp-replicated parameter per stage (squared norm 1000 * (pp + 1), held
// whole by every tp rank of the stage), replicated over dp. Each rank passes its shard plus the
// replicated parameter only where counts_replicated(); every rank must get the whole model's sum,
// each replicated parameter counted once.
TEST_F(MeshTest, ModelParallelSumCountsReplicatedParametersOnce) {
  ASSERT_EQ(world_.size, kWorld);
  for (const auto& [dp, tp, pp] : factorisations(kWorld)) {
    SCOPED_TRACE(testing::Message() << "dp " << dp << " x tp " << tp << " x pp " << pp);
    auto m = Mesh::over(ParallelDims{dp, tp, pp}, *comm_);
    ASSERT_TRUE(m.ok());
    const Coord c = documented_order(dp, tp, pp)[comm_->rank()];
    double want = 0;
    for (int p = 0; p < pp; ++p) {
      want += 1000.0 * (p + 1);
      for (int t = 0; t < tp; ++t) want += 10.0 * p + t + 1;
    }
    const double local =
        10.0 * c.pp + c.tp + 1 + ((*m)->counts_replicated() ? 1000.0 * (c.pp + 1) : 0.0);
    EXPECT_EQ((*m)->sum_over_model_parallel(local), want);
  }
}

}  // namespace
}  // namespace kiln::parallel
