// Tensor-parallel checkpoints under real MPI (ctest: mpi_tp_checkpoint_np4), without the
// tensor-parallel layers: a rank of a tp x dp layout is built exactly as the contract says
// (every parameter keeps its name; one split by its TpEntry holds parallel::tp_slice of the full
// tensor, others the full tensor; ZeRO shards the local tensors over the dp group). For a tiny
// GPT-2 (fused c_attn: 3 partitions) and a tiny Llama (grouped-query attention), each layout of
// kLayouts saves a checkpoint from real processes (a sub-communicator of the 4-rank world: the
// save is collective), then every layout of kLayouts is loaded from every checkpoint (each rank
// of the loading layout simulated in one process: loading is local) and every parameter and
// optimizer-state element it holds must equal the full model's, bit for bit. Every full tensor
// holds distinct values (parameter k, element i: k * 50000 + i; optimizer state s adds
// (s + 1) / 4), so a piece read from the wrong place cannot match. The safetensors export of
// every checkpoint must equal the tp = 1 checkpoint's byte for byte.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/autograd.h"
#include "core/check.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/checkpoint_tp.h"
#include "launch/hf_mapping.h"
#include "models/model.h"
#include "optim/optimizer.h"
#include "parallel/file_comm.h"
#include "parallel/mesh.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;

struct Layout {
  int tp, dp, zero;
  int world() const { return tp * dp; }
  std::string name() const { return absl::StrFormat("tp%d_dp%d_zero%d", tp, dp, zero); }
};

// The first is the reference (tp = 1, one process).
const Layout kLayouts[] = {{1, 1, 0}, {2, 1, 0}, {4, 1, 1}, {2, 2, 0}, {2, 2, 1},
                           {2, 2, 3}, {1, 4, 3}, {4, 1, 3}, {1, 2, 2}};

ModelConfig model_config(bool llama) {
  ModelConfig m;
  m.set_family(llama ? ModelConfig::LLAMA : ModelConfig::GPT2);
  m.set_n_layer(2);
  m.set_n_head(8);
  m.set_n_kv_head(llama ? 4 : 8);  // Llama: grouped-query (2 query heads per kv head)
  m.set_d_model(16);
  m.set_d_ff(llama ? 24 : 32);
  m.set_vocab_size(30);
  m.set_vocab_pad_multiple(8);  // 32 rows: vocab-parallel over 4 ranks
  m.set_max_seq_len(8);
  m.set_tied_embeddings(!llama);
  m.set_bias(!llama);
  m.set_norm_eps(1e-5);
  m.set_rope_theta(10000);
  m.set_init_std(0.02);
  return m;
}

// The full (tp = 1) value of every tensor a checkpoint holds: parameters and optimizer state.
std::map<std::string, Tensor> full_tensors(const models::LanguageModel& m) {
  std::map<std::string, Tensor> out;
  int k = 0;
  for (const nn::Parameter& p : m.parameters()) {
    Tensor t = Tensor::empty(p.tensor.shape(), DType::kF32);
    float* x = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) x[i] = static_cast<float>(k * 50000 + i);
    int s = 0;
    for (const char* state : {"exp_avg/", "exp_avg_sq/"}) {
      Tensor o = t.clone();
      float* y = o.data<float>();
      for (int64_t i = 0; i < o.numel(); ++i) y[i] += 0.25f * static_cast<float>(s + 1);
      out[state + p.name] = o;
      ++s;
    }
    out[p.name] = t;
    ++k;
  }
  return out;
}

// A communicator that only knows its place: DataParallel needs no collective to be built or to
// list its pieces, so one process can stand for any rank of a dp group.
class PlaceOnly final : public parallel::Communicator {
 public:
  PlaceOnly(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "place-only"; }
  std::unique_ptr<parallel::Work> all_reduce_async(const Tensor&, parallel::ReduceOp) override {
    return fail();
  }
  std::unique_ptr<parallel::Work> reduce_scatter_async(const Tensor&, const Tensor&,
                                                       parallel::ReduceOp) override {
    return fail();
  }
  std::unique_ptr<parallel::Work> all_gather_async(const Tensor&, const Tensor&) override {
    return fail();
  }
  void broadcast(const Tensor&, int) override { fail(); }
  void send(const Tensor&, int) override { fail(); }
  void recv(const Tensor&, int) override { fail(); }
  void barrier() override { fail(); }
  std::unique_ptr<Communicator> split(int, int) override {
    fail();
    return nullptr;
  }

 private:
  static std::unique_ptr<parallel::Work> fail() {
    KILN_CHECK(false) << "PlaceOnly: no collectives";
    return nullptr;
  }
  int rank_, size_;
};

// Makes `param` hold `value` under the same TensorImpl (what applying tensor parallelism does to
// a split parameter: same name, the rank's slice).
void hold(const Tensor& param, const Tensor& value) {
  Tensor v = value.contiguous().clone();
  TensorImpl* impl = param.impl();
  impl->storage = v.storage();
  impl->shape = v.shape();
  impl->strides = v.strides();
  impl->offset = 0;
  impl->grad = Tensor();
}

// One rank of a layout: the model holding its tp slices, data parallel / ZeRO around it.
struct Rank {
  std::unique_ptr<models::LanguageModel> model;
  parallel::TpPlan plan;
  TpCoords tp;
  int dp_rank = 0;
  std::unique_ptr<parallel::Communicator> place;
  std::unique_ptr<parallel::DataParallel> dp;
  // The rank's slice of a full tensor (a parameter's or its optimizer state's), flattened.
  Tensor local(const std::string& name, const std::map<std::string, Tensor>& full) const {
    const size_t slash = name.find('/');
    const std::string param = slash == std::string::npos ? name : name.substr(slash + 1);
    const Tensor t = parallel::tp_slice(full.at(name), *plan.find(param), tp.tp, tp.rank);
    return t.reshape({t.numel()});
  }
};

// Rank `rank` of layout `l`; its dp group is `dp_comm`, or (null) a PlaceOnly stand-in.
std::unique_ptr<Rank> make_rank(const ModelConfig& mc, const Layout& l, int rank,
                                const std::map<std::string, Tensor>& full,
                                parallel::Communicator* dp_comm) {
  NoGradGuard ng;
  auto r = std::make_unique<Rank>();
  r->model = models::build_model(models::spec_from_config(mc), 3);
  r->plan = r->model->tensor_parallel_plan();
  r->tp = TpCoords{&r->plan, l.tp, rank % l.tp};
  r->dp_rank = rank / l.tp;
  if (dp_comm == nullptr) {
    r->place = std::make_unique<PlaceOnly>(r->dp_rank, l.dp);
    dp_comm = r->place.get();
  }
  for (const nn::Parameter& p : r->model->parameters()) {
    const parallel::TpEntry* e = r->plan.find(p.name);
    KILN_CHECK(e != nullptr) << p.name;
    hold(p.tensor, parallel::tp_slice(full.at(p.name), *e, l.tp, r->tp.rank));
  }
  parallel::DataParallelOptions o;
  o.zero_stage = l.zero;
  r->dp = std::make_unique<parallel::DataParallel>(
      *r->model, r->model->parameters(), *dp_comm, o, [](std::vector<nn::Parameter> ps) {
        return std::make_unique<optim::AdamW>(std::move(ps), optim::AdamWOptions{});
      });
  // The optimizer state this rank holds: its flat ranges of its slices of the full state.
  for (parallel::Piece p : r->dp->optimizer_pieces())
    p.local.copy_(r->local(p.name, full).narrow(0, p.offset, p.local.numel()));
  return r;
}

std::string run_root() {
  static const std::string root = [] {
    const char* t = std::getenv("TMPDIR");
    return std::string(t && *t ? t : "/tmp");
  }();
  return root;
}

class TpCheckpointTest : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    const parallel::World w = parallel::detect_world();
    auto c = parallel::make_world_comm(w);
    ASSERT_TRUE(c.ok()) << c.status().message();
    world_ = c->release();
    // One directory for all ranks: rank 0's pid, summed over the world.
    const double pid = world_->all_reduce_scalar(world_->rank() == 0 ? getpid() : 0);
    dir_ = absl::StrFormat("%s/kiln_tp_ckpt_%d", run_root(), static_cast<int64_t>(pid));
  }
  static void TearDownTestSuite() {
    world_->barrier();
    std::error_code ec;
    if (world_->rank() == 0 && !::testing::Test::HasFailure()) fs::remove_all(dir_, ec);
  }
  static parallel::Communicator* world_;
  static std::string dir_;
};
parallel::Communicator* TpCheckpointTest::world_ = nullptr;
std::string TpCheckpointTest::dir_;

// Saves layout `l` from the first l.world() ranks of the world; returns the checkpoint.
std::string save_layout(const ModelConfig& mc, const Layout& l,
                        const std::map<std::string, Tensor>& full, parallel::Communicator& world,
                        const std::string& root) {
  const int me = world.rank();
  std::unique_ptr<parallel::Communicator> sub = world.split(me < l.world() ? 0 : 1, me);
  const std::string dir = root + "/" + l.name();
  if (me < l.world()) {
    auto mesh = parallel::Mesh::over(parallel::ParallelDims{l.dp, l.tp, 1}, *sub);
    KILN_CHECK(mesh.ok()) << mesh.status().message();
    KILN_CHECK((*mesh)->tp_rank() == me % l.tp && (*mesh)->dp_rank() == me / l.tp);
    std::unique_ptr<Rank> r = make_rank(mc, l, me, full, &(*mesh)->dp());
    Manifest h;
    *h.mutable_config()->mutable_model() = mc;
    h.set_step(1);
    ParallelLayout* pl = h.mutable_layout();
    pl->set_world_size(l.world());
    pl->set_dp(l.dp);
    pl->set_tp(l.tp);
    pl->set_pp(1);
    pl->set_zero_stage(l.zero);
    RankContribution mine;
    mine.pieces = checkpoint_pieces_to_save(*r->dp, r->dp_rank, r->tp);
    absl::StatusOr<std::string> path = save_checkpoint(dir, h, mine, (*mesh)->world());
    KILN_CHECK(path.ok()) << l.name() << ": " << path.status().message();
  }
  world.barrier();
  return dir + "/" + step_dir_name(1);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.contiguous(), y = b.contiguous();
  return x.numel() == y.numel() && std::memcmp(x.raw(), y.raw(), x.nbytes()) == 0;
}

// Every rank of `l` loads `path`; returns the first element that differs from the full model, or
// "" when every one is equal.
std::string load_and_compare(const ModelConfig& mc, const Layout& l, const std::string& path,
                             const std::map<std::string, Tensor>& full) {
  NoGradGuard ng;
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(path);
  if (!m.ok()) return std::string(m.status().message());
  for (int rank = 0; rank < l.world(); ++rank) {
    std::unique_ptr<Rank> r = make_rank(mc, l, rank, full, nullptr);
    const std::vector<nn::Parameter> params = r->model->parameters();
    // Poison everything the rank holds, so that an element the load misses cannot pass.
    const float nan = std::nanf("");
    if (l.zero < 3)
      for (nn::Parameter p : params) p.tensor.fill_(nan);
    for (parallel::Piece p : r->dp->parameter_pieces()) p.local.fill_(nan);
    for (parallel::Piece p : r->dp->optimizer_pieces()) p.local.fill_(nan);
    const absl::Status s = check_model_shapes(*m, mc, tp_global_shapes(r->tp, params), path);
    if (!s.ok()) return std::string(s.message());
    const absl::Status rd =
        read_checkpoint_pieces(path, *m, checkpoint_pieces_to_load(*r->dp, params, r->tp));
    if (!rd.ok()) return std::string(rd.message());
    const std::string where = absl::StrFormat(" (rank %d of %s)", rank, l.name());
    if (l.zero < 3)
      for (const nn::Parameter& p : params)
        if (!same_bits(p.tensor.reshape({p.tensor.numel()}), r->local(p.name, full)))
          return "parameter " + p.name + where;
    for (auto pieces : {r->dp->parameter_pieces(), r->dp->optimizer_pieces()})
      for (const parallel::Piece& p : pieces)
        if (!same_bits(p.local, r->local(p.name, full).narrow(0, p.offset, p.local.numel())))
          return absl::StrFormat("piece %s [%d, +%d)%s", p.name, p.offset, p.local.numel(), where);
  }
  return "";
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_P(TpCheckpointTest, EveryLayoutLoadsEveryOtherBitForBit) {
  ASSERT_EQ(world_->size(), 4) << "run under mpirun -np 4";
  const ModelConfig mc = model_config(GetParam());
  const std::string root = dir_ + (GetParam() ? "/llama" : "/gpt2");
  const std::map<std::string, Tensor> full =
      full_tensors(*models::build_model(models::spec_from_config(mc), 3));
  std::vector<std::string> saved;
  for (const Layout& l : kLayouts) saved.push_back(save_layout(mc, l, full, *world_, root));
  const int n = static_cast<int>(std::size(kLayouts));
  // The (saved, loaded) pairs, dealt round-robin over the ranks.
  for (int k = world_->rank(); k < n * n; k += world_->size()) {
    const Layout& from = kLayouts[k / n];
    const Layout& to = kLayouts[k % n];
    EXPECT_EQ(load_and_compare(mc, to, saved[k / n], full), "")
        << "saved by " << from.name() << ", loaded by " << to.name();
  }
  // Whole tensors and the export, from this rank's share of the checkpoints.
  const std::string ref_out = absl::StrFormat("%s/export_ref_r%d", root, world_->rank());
  ASSERT_TRUE(export_safetensors(saved[0], ref_out).ok());
  const std::string ref = file_bytes(ref_out + "/model.safetensors");
  ASSERT_GT(ref.size(), 1000u);
  for (int k = world_->rank(); k < n; k += world_->size()) {
    absl::StatusOr<Manifest> m = read_checkpoint_manifest(saved[k]);
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_EQ(m->format_version(), kLayouts[k].tp > 1 ? 2u : 1u) << kLayouts[k].name();
    EXPECT_EQ(m->layout().tp(), kLayouts[k].tp);
    EXPECT_TRUE(verify_checkpoint(saved[k], *m).ok()) << kLayouts[k].name();
    for (const auto& [name, t] : full) {
      const std::string stored =
          name.find('/') == std::string::npos ? name : optimizer_tensor_name(name);
      absl::StatusOr<Tensor> got = read_full_tensor(saved[k], *m, stored);
      ASSERT_TRUE(got.ok()) << got.status().message();
      EXPECT_TRUE(same_bits(*got, t)) << stored << " saved by " << kLayouts[k].name();
    }
    const std::string out = absl::StrFormat("%s/export_%s", root, kLayouts[k].name());
    ASSERT_TRUE(export_safetensors(saved[k], out).ok());
    EXPECT_TRUE(file_bytes(out + "/model.safetensors") == ref)
        << "export of " << kLayouts[k].name() << " differs from tp1's";
  }
  world_->barrier();
}

INSTANTIATE_TEST_SUITE_P(Families, TpCheckpointTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Llama" : "GPT2"; });

}  // namespace
}  // namespace kiln::launch
