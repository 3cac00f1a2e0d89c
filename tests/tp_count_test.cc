// Tensor parallel by the numbers, under real MPI (tp = the world: 2 or 4 ranks): the tp
// collectives of one forward and one backward counted in a wrapping communicator, per block
// (the difference between a 3-block and a 2-block model) against Megatron's theory; the per-rank
// bytes of the sharded parameters (1/tp of the whole); the CPU allocator's peak activation bytes
// per rank with and without sequence parallel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "core/allocator.h"
#include "core/check.h"
#include "models/transformer.h"
#include "parallel/file_comm.h"
#include "parallel/tensor_parallel/apply.h"
#include "parallel/world.h"

namespace kiln {
namespace {

using parallel::Communicator;
using parallel::ReduceOp;
using parallel::Work;

// Counts every collective (calls, and the elements of its input on this rank) by kind, then
// runs it on the wrapped communicator.
class CountingComm final : public Communicator {
 public:
  struct Count {
    int64_t calls = 0, elements = 0;
    bool operator==(const Count& o) const { return calls == o.calls && elements == o.elements; }
  };
  explicit CountingComm(Communicator& inner) : inner_(inner) {}
  std::map<std::string, Count> counts;

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return "counting " + inner_.backend(); }
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op) override {
    add("all_reduce", t);
    return inner_.all_reduce_async(t, op);
  }
  std::unique_ptr<Work> reduce_scatter_async(const Tensor& in, const Tensor& out,
                                             ReduceOp op) override {
    add("reduce_scatter", in);
    return inner_.reduce_scatter_async(in, out, op);
  }
  std::unique_ptr<Work> all_gather_async(const Tensor& in, const Tensor& out) override {
    add("all_gather", in);
    return inner_.all_gather_async(in, out);
  }
  void broadcast(const Tensor& t, int root) override { inner_.broadcast(t, root); }
  void send(const Tensor& t, int peer) override { inner_.send(t, peer); }
  void recv(const Tensor& t, int peer) override { inner_.recv(t, peer); }
  void barrier() override { inner_.barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return inner_.split(color, key);
  }

 private:
  void add(const std::string& kind, const Tensor& t) {
    counts[kind].calls++;
    counts[kind].elements += t.numel();
  }
  Communicator& inner_;
};

Communicator& world() {
  static Communicator* c = [] {
    auto w = parallel::make_world_comm(parallel::detect_world());
    KILN_CHECK(w.ok()) << w.status().message();
    return w->release();
  }();
  return *c;
}

constexpr int64_t kB = 2, kT = 8, kC = 32;

models::ModelSpec spec(bool llama, int64_t layers, int tp) {
  models::ModelSpec s;
  s.family = llama ? models::Family::kLlama : models::Family::kGPT2;
  s.n_layer = layers;
  s.n_head = 2 * tp;
  s.n_kv_head = llama ? tp : s.n_head;  // grouped-query attention for Llama
  s.d_model = kC;
  s.d_ff = 64;
  s.vocab_size = 96;
  s.max_seq_len = 32;
  s.tied_embeddings = !llama;
  s.bias = !llama;
  return s;
}

struct PassCounts {
  std::map<std::string, CountingComm::Count> fwd, bwd;
};

PassCounts count_pass(bool llama, int64_t layers, bool sp) {
  Communicator& w = world();
  auto model = models::build_model(spec(llama, layers, w.size()), 1);
  CountingComm cc(w);
  parallel::TensorParallelOptions o;
  o.sequence_parallel = sp;
  KILN_CHECK(parallel::apply_tensor_parallel(*model, cc, o).ok());
  std::vector<int64_t> ids(kB * kT), tg(kB * kT);
  for (int64_t i = 0; i < kB * kT; ++i) ids[i] = (7 * i) % 96, tg[i] = (5 * i + 3) % 96;
  cc.counts.clear();
  Tensor loss = model->loss(Tensor::from_ints(ids, {kB, kT}), Tensor::from_ints(tg, {kB, kT}));
  PassCounts out;
  out.fwd = cc.counts;
  cc.counts.clear();
  loss.backward();
  out.bwd = cc.counts;
  return out;
}

// Per block: the counts of a 3-block model minus those of a 2-block one.
std::map<std::string, CountingComm::Count> per_block(
    const std::map<std::string, CountingComm::Count>& a,
    const std::map<std::string, CountingComm::Count>& b) {
  std::map<std::string, CountingComm::Count> out;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    CountingComm::Count d{v.calls - (it == b.end() ? 0 : it->second.calls),
                          v.elements - (it == b.end() ? 0 : it->second.elements)};
    if (d.calls != 0 || d.elements != 0) out[k] = d;
  }
  return out;
}

std::string str(const std::map<std::string, CountingComm::Count>& m) {
  std::string s;
  for (const auto& [k, v] : m)
    s += k + " x" + std::to_string(v.calls) + " (" + std::to_string(v.elements) + " elements) ";
  return s;
}

class TpCountTest : public ::testing::TestWithParam<bool> {};

TEST_P(TpCountTest, CollectivesPerBlockWithoutSequenceParallelAreTwoAllReducesEachWay) {
  const bool llama = GetParam();
  const PassCounts three = count_pass(llama, 3, false), two = count_pass(llama, 2, false);
  const auto fwd = per_block(three.fwd, two.fwd), bwd = per_block(three.bwd, two.bwd);
  // Megatron: the row-parallel attention output and MLP down each all-reduce (B, T, C) forward;
  // the column-parallel inputs (one per attention, one per MLP, shared by q/k/v and gate/up)
  // each all-reduce their (B, T, C) gradient backward. Nothing else.
  const std::map<std::string, CountingComm::Count> want{{"all_reduce", {2, 2 * kB * kT * kC}}};
  EXPECT_EQ(fwd, want) << "forward per block: " << str(fwd);
  EXPECT_EQ(bwd, want) << "backward per block: " << str(bwd);
  if (world().rank() == 0)
    std::printf("%s tp=%d per block: forward %s| backward %s\n", llama ? "llama" : "gpt2",
                world().size(), str(fwd).c_str(), str(bwd).c_str());
}

TEST_P(TpCountTest, CollectivesPerBlockWithSequenceParallelAreGatherScatterPairs) {
  const bool llama = GetParam();
  const int tp = world().size();
  const PassCounts three = count_pass(llama, 3, true), two = count_pass(llama, 2, true);
  const auto fwd = per_block(three.fwd, two.fwd), bwd = per_block(three.bwd, two.bwd);
  const int64_t full = kB * kT * kC, chunk = full / tp;
  // Forward: all-gather of the (B, T/tp, C) chunk before attention and before the MLP, and
  // reduce-scatter of the (B, T, C) partial sums after each; backward the same pairs reversed.
  const std::map<std::string, CountingComm::Count> fwd_want{{"all_gather", {2, 2 * chunk}},
                                                            {"reduce_scatter", {2, 2 * full}}};
  EXPECT_EQ(fwd, fwd_want) << "forward per block: " << str(fwd);
  // Backward also sums, over tp, the gradients of the parameters used on the sequence chunk:
  // the norms' weights (and biases) and the row-parallel biases, C elements each (GPT-2: ln_1
  // weight and bias, ln_2 weight and bias, two output biases; Llama: two RMSNorm weights).
  const int64_t partial = llama ? 2 : 6;
  std::map<std::string, CountingComm::Count> bwd_want = fwd_want;
  bwd_want["all_reduce"] = {partial, partial * kC};
  EXPECT_EQ(bwd, bwd_want) << "backward per block: " << str(bwd);
  if (world().rank() == 0)
    std::printf("%s tp=%d sp per block: forward %s| backward %s\n", llama ? "llama" : "gpt2", tp,
                str(fwd).c_str(), str(bwd).c_str());
}

TEST_P(TpCountTest, ShardedParameterBytesFallAsOneOverTp) {
  const bool llama = GetParam();
  const int tp = world().size();
  auto model = models::build_model(spec(llama, 2, tp), 1);
  const parallel::TpPlan plan = model->tensor_parallel_plan();
  auto bytes = [&](bool sharded) {
    int64_t n = 0;
    for (const nn::Parameter& p : model->parameters())
      if ((plan.find(p.name)->dim >= 0) == sharded) n += static_cast<int64_t>(p.tensor.nbytes());
    return n;
  };
  const int64_t sharded = bytes(true), whole = bytes(false);
  CountingComm cc(world());
  ASSERT_TRUE(parallel::apply_tensor_parallel(*model, cc).ok());
  EXPECT_EQ(bytes(true) * tp, sharded);
  EXPECT_EQ(bytes(false), whole);
  if (world().rank() == 0)
    std::printf("%s tp=%d: sharded parameter bytes per rank %lld of %lld (replicated %lld)\n",
                llama ? "llama" : "gpt2", tp, static_cast<long long>(bytes(true)),
                static_cast<long long>(sharded), static_cast<long long>(whole));
}

// Peak bytes the CPU allocator hands out during one forward and backward over (4, 64) tokens,
// above what the model holds before it.
int64_t peak_activation_bytes(bool llama, bool sp) {
  models::ModelSpec s = spec(llama, 2, world().size());
  s.max_seq_len = 64;
  auto model = models::build_model(s, 1);
  parallel::TensorParallelOptions o;
  o.sequence_parallel = sp;
  KILN_CHECK(parallel::apply_tensor_parallel(*model, world(), o).ok());
  const int64_t b = 4, t = 64;
  std::vector<int64_t> ids(b * t), tg(b * t);
  for (int64_t i = 0; i < b * t; ++i) ids[i] = (7 * i) % 96, tg[i] = (5 * i + 3) % 96;
  Tensor in = Tensor::from_ints(ids, {b, t}), tgt = Tensor::from_ints(tg, {b, t});
  Allocator* a = allocator_for(Device::cpu());
  const int64_t base = a->stats().allocated;
  a->reset_peak();
  model->loss(in, tgt).backward();
  return a->stats().peak - base;
}

TEST_P(TpCountTest, PeakActivationBytesFallWithSequenceParallel) {
  const bool llama = GetParam();
  const int64_t off = peak_activation_bytes(llama, false), on = peak_activation_bytes(llama, true);
  if (world().rank() == 0)
    std::printf(
        "%s tp=%d: peak activation bytes per rank %lld without sequence parallel, %lld "
        "with (%.2fx)\n",
        llama ? "llama" : "gpt2", world().size(), static_cast<long long>(off),
        static_cast<long long>(on), static_cast<double>(off) / on);
  EXPECT_LT(on, off);
}

// forward() (evaluation, sampling) gathers the vocab-parallel logits; under sequence parallel a
// length that does not split over tp (sampling one token more at a time) runs whole.
TEST_P(TpCountTest, LogitsEqualTheSingleProcessForAnySequenceLength) {
  const bool llama = GetParam();
  for (bool sp : {false, true})
    for (int64_t t : {int64_t{8}, int64_t{3}}) {
      const models::ModelSpec s = spec(llama, 2, world().size());
      auto whole = models::build_model(s, 1), part = models::build_model(s, 1);
      parallel::TensorParallelOptions o;
      o.sequence_parallel = sp;
      ASSERT_TRUE(parallel::apply_tensor_parallel(*part, world(), o).ok());
      std::vector<int64_t> ids(2 * t);
      for (int64_t i = 0; i < 2 * t; ++i) ids[i] = (11 * i + 1) % 96;
      const Tensor in = Tensor::from_ints(ids, {2, t});
      const std::vector<double> want = whole->forward(in).to_vector(),
                                got = part->forward(in).to_vector();
      ASSERT_EQ(got.size(), want.size());
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
      EXPECT_LE(worst, 1e-5) << "sp " << sp << " T " << t;
    }
}

INSTANTIATE_TEST_SUITE_P(Families, TpCountTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "llama" : "gpt2";
                         });

}  // namespace
}  // namespace kiln
