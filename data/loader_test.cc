// DataLoader tests: samples are windows of the shard stream (across shard boundaries, prefixes for
// shorter T), each epoch is a permutation, N ranks split the single-rank stream with no overlap,
// prefetching changes nothing, and resuming from a saved position at step k reproduces the
// uninterrupted batches exactly, across changes of B and T.
#include "data/loader.h"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <set>
#include <thread>

#include "core/check.h"
#include "data/shard.h"
#include "data/test_util.h"
#include "gtest/gtest.h"

namespace kiln::data {
namespace {

using testing::TempDir;

constexpr int64_t kPrime = 65521;
int32_t stream_token(int64_t g) { return static_cast<int32_t>((g * 7 + 3) % kPrime); }

// Shards of uneven sizes holding the stream token(g) for g in [0, total).
std::vector<std::string> write_stream(const TempDir& dir, const std::vector<int64_t>& sizes) {
  std::vector<std::string> paths;
  int64_t g = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    std::vector<int32_t> toks;
    for (int64_t i = 0; i < sizes[k]; ++i) toks.push_back(stream_token(g++));
    std::string p = dir.file("s_" + std::to_string(100 + k) + ".bin");
    EXPECT_TRUE(write_shard(p, toks, 2).ok());
    paths.push_back(p);
  }
  return paths;
}

std::unique_ptr<DataLoader> open(const LoaderOptions& o) {
  auto l = DataLoader::Open(o);
  KILN_CHECK(l.ok()) << l.status();
  return *std::move(l);
}

std::vector<int32_t> ints(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_stream(dir_, {1000, 37, 2500, 1, 463});  // 4001 tokens
    opts_.shards = {dir_.file("s_*.bin")};
    opts_.vocab_size = kPrime;
    opts_.max_seq_len = 40;  // S = 4000 / 40 = 100 samples
    opts_.seed = 1234;
  }
  TempDir dir_;
  LoaderOptions opts_;
};

TEST_F(LoaderTest, SamplesAreWindowsOfTheStream) {
  auto l = open(opts_);
  EXPECT_EQ(l->num_tokens(), 4001);
  EXPECT_EQ(l->num_samples(), 100);
  for (int64_t T : {40, 17, 1}) {
    Batch b = l->Next(6, T);
    ASSERT_EQ(b.inputs.shape(), (Shape{6, T}));
    ASSERT_EQ(b.targets.shape(), (Shape{6, T}));
    EXPECT_EQ(b.inputs.dtype(), DType::kI32);
    std::vector<int32_t> in = ints(b.inputs), tg = ints(b.targets);
    for (int64_t i = 0; i < 6; ++i) {
      const int64_t start = b.samples[i] * 40;  // windows span shard boundaries (1000, 1037, ...)
      for (int64_t j = 0; j < T; ++j) {
        ASSERT_EQ(in[i * T + j], stream_token(start + j));
        ASSERT_EQ(tg[i * T + j], stream_token(start + j + 1));
      }
    }
  }
  EXPECT_THROW(l->Next(1, 41), kiln::Error);
  EXPECT_THROW(l->Next(0, 4), kiln::Error);
}

TEST_F(LoaderTest, EachEpochIsASeededPermutation) {
  auto l = open(opts_);
  const int64_t S = l->num_samples();
  std::vector<std::vector<int64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    std::vector<int64_t> order;
    for (int64_t p = 0; p < S; ++p) order.push_back(l->SampleAt(e * S + p));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(S);
    std::iota(iota.begin(), iota.end(), 0);
    EXPECT_EQ(sorted, iota) << "epoch " << e;
    epochs.push_back(order);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[0], std::vector<int64_t>(epochs[0].rbegin(), epochs[0].rend()));
  LoaderOptions other = opts_;
  other.seed = 99;
  EXPECT_NE(open(other)->SampleAt(0) * 1000 + open(other)->SampleAt(1),
            l->SampleAt(0) * 1000 + l->SampleAt(1));
  other.shuffle = false;
  auto seq = open(other);
  for (int64_t p = 0; p < 2 * S; ++p) ASSERT_EQ(seq->SampleAt(p), p % S);
}

// Stream positions 0..steps*W*B-1, as served by W ranks with per-rank batch B.
std::vector<int64_t> served(const LoaderOptions& base, int world, int64_t B, int steps) {
  std::vector<int64_t> by_position(static_cast<size_t>(steps) * world * B, -1);
  for (int r = 0; r < world; ++r) {
    LoaderOptions o = base;
    o.rank = r;
    o.world_size = world;
    auto l = open(o);
    for (int k = 0; k < steps; ++k) {
      Batch b = l->Next(B, 8);
      for (int64_t i = 0; i < B; ++i) by_position[(k * world + r) * B + i] = b.samples[i];
    }
  }
  return by_position;
}

TEST_F(LoaderTest, RanksSplitTheSingleRankSamplesWithoutOverlap) {
  const int64_t S = 100, B = 3;
  const int steps = 40;  // 40 * 4 * 3 = 480 samples: several epochs, boundaries mid-batch
  std::vector<int64_t> single = served(opts_, 1, 4 * B, steps);
  for (int world : {1, 2, 4}) {
    std::vector<int64_t> multi = served(opts_, world, 4 * B / world, steps);
    EXPECT_EQ(multi, single) << world << " ranks";
    // Each epoch (S consecutive stream positions) holds every sample exactly once.
    for (int64_t e = 0; (e + 1) * S <= static_cast<int64_t>(multi.size()); ++e) {
      std::set<int64_t> seen(multi.begin() + e * S, multi.begin() + (e + 1) * S);
      EXPECT_EQ(static_cast<int64_t>(seen.size()), S) << world << " ranks, epoch " << e;
    }
    // Within one step the ranks' batches are disjoint.
    for (int k = 0; k < steps; ++k) {
      std::set<int64_t> step(multi.begin() + k * 4 * B, multi.begin() + (k + 1) * 4 * B);
      EXPECT_EQ(static_cast<int64_t>(step.size()), 4 * B) << world << " ranks, step " << k;
    }
  }
}

struct Step {
  int64_t B, T;
};
// A schedule with a batch-size ramp and a sequence-length curriculum.
std::vector<Step> schedule() {
  std::vector<Step> s;
  for (int k = 0; k < 24; ++k)
    s.push_back({k < 6 ? 2 : k < 14 ? 5 : 3, k < 9 ? 8 : k < 18 ? 20 : 40});
  return s;
}

struct Served {
  std::vector<int32_t> inputs, targets;
  bool operator==(const Served&) const = default;
};

TEST_F(LoaderTest, ResumeAtStepKGivesTheUninterruptedBatches) {
  const std::vector<Step> plan = schedule();
  for (int world : {1, 2}) {
    for (int rank = 0; rank < world; ++rank) {
      LoaderOptions o = opts_;
      o.world_size = world;
      o.rank = rank;
      o.prefetch = 2;
      auto full = open(o);
      std::vector<Served> want;
      std::vector<std::string> saved;  // position before each step, as a checkpoint stores it
      for (const Step& s : plan) {
        saved.push_back(full->Position().Serialize());
        Batch b = full->Next(s.B, s.T);
        want.push_back({ints(b.inputs), ints(b.targets)});
      }
      for (int k : {0, 1, 5, 6, 9, 13, 17, 23}) {
        for (int prefetch : {0, 3}) {
          LoaderOptions ro = o;
          ro.prefetch = prefetch;
          auto resumed = open(ro);
          resumed->Next(7, 11);  // whatever it did before is overwritten by Restore
          auto pos = LoaderPosition::Parse(saved[k]);
          ASSERT_TRUE(pos.ok()) << pos.status();
          ASSERT_TRUE(resumed->Restore(*pos).ok());
          for (size_t j = k; j < plan.size(); ++j) {
            Batch b = resumed->Next(plan[j].B, plan[j].T);
            ASSERT_EQ((Served{ints(b.inputs), ints(b.targets)}), want[j])
                << "world " << world << " rank " << rank << " resumed at " << k << " step " << j
                << " prefetch " << prefetch;
          }
        }
      }
    }
  }
}

TEST_F(LoaderTest, PrefetchDoesNotChangeWhatIsServed) {
  LoaderOptions a = opts_, b = opts_;
  a.prefetch = 0;
  b.prefetch = 4;
  auto la = open(a), lb = open(b);
  for (const Step& s : schedule()) {
    Batch x = la->Next(s.B, s.T), y = lb->Next(s.B, s.T);
    ASSERT_EQ(x.samples, y.samples);
    ASSERT_EQ(ints(x.inputs), ints(y.inputs));
  }
  EXPECT_EQ(la->Position(), lb->Position());
  // In a steady state (same shape, a consumer slower than the prefetcher) batches come ready-made.
  for (int i = 0; i < 10; ++i) {
    lb->Next(4, 40);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(lb->prefetch_hits(), 8);
  EXPECT_EQ(la->prefetch_hits(), 0);
}

TEST_F(LoaderTest, PositionSerializesAndChecksTheSampleSpace) {
  auto l = open(opts_);
  l->Next(3, 40);
  LoaderPosition p = l->Position();
  EXPECT_EQ(p.consumed, 3u);
  auto q = LoaderPosition::Parse(p.Serialize());
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, p);
  EXPECT_FALSE(LoaderPosition::Parse("kiln-loader v1 consumed=x").ok());
  EXPECT_FALSE(LoaderPosition::Parse("").ok());

  LoaderOptions other = opts_;
  other.seed = 5;
  absl::Status st = open(other)->Restore(p);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("seed"), std::string::npos) << st;
  other = opts_;
  other.max_seq_len = 20;
  st = open(other)->Restore(p);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(open(opts_)->epoch(), 0);
  auto l2 = open(opts_);
  p.consumed = 250;
  ASSERT_TRUE(l2->Restore(p).ok());
  EXPECT_EQ(l2->epoch(), 2);
}

}  // namespace
}  // namespace kiln::data
