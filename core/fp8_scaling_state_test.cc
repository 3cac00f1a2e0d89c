// nn::Linear's fp8 delayed-scaling state (core/nn/layers.h, core/ops/fp8.h), on the CPU: absent
// when delayed scaling is off (KILN_FP8_DELAYED_SCALING=0); with it, made once and shared by every
// later forward and by the backward that holds it (the GPU side is tested in
// core/ops/fp8_delayed_cuda_test.cc).
#include <gtest/gtest.h>

#include <memory>

#include "core/nn/fp8_histories.h"
#include "core/nn/layers.h"
#include "core/ops/fp8.h"
#include "core/random.h"

namespace kiln {
namespace {

TEST(Fp8ScalingState, MadeOnceAndOnlyWhenDelayedScalingIsOn) {
  struct Reset {
    ~Reset() { set_fp8_delayed_scaling_override(-1); }
  } reset;
  Generator gen(3);
  nn::Linear a(16, 32, true, 0.02, gen), b(16, 32, false, 0.02, gen);
  set_fp8_delayed_scaling_override(0);
  EXPECT_FALSE(fp8_delayed_scaling());
  EXPECT_EQ(a.fp8_scaling(), nullptr);
  set_fp8_delayed_scaling_override(1);
  ASSERT_TRUE(fp8_delayed_scaling());
  const std::shared_ptr<Fp8LinearScaling> s = a.fp8_scaling();
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(a.fp8_scaling(), s) << "one state per layer, kept across forwards";
  EXPECT_NE(b.fp8_scaling(), s) << "each layer its own";
  EXPECT_EQ(s->x.uses + s->w.uses + s->gy.uses, 0);
  EXPECT_FALSE(s->x.slots.defined()) << "the slots are allocated on the GPU at first use";
  set_fp8_delayed_scaling_override(0);
  EXPECT_EQ(a.fp8_scaling(), nullptr) << "off again: no state handed out";
}

// Two Linear layers under one module, as a model holds them.
struct TwoLinears : nn::Module {
  explicit TwoLinears(Generator& gen) {
    a = register_module("a", std::make_shared<nn::Linear>(16, 32, true, 0.02, gen));
    b = register_module("b", std::make_shared<nn::Linear>(32, 16, false, 0.02, gen));
  }
  std::shared_ptr<nn::Linear> a, b;
};

// What checkpoints keep of the histories (core/nn/fp8_histories.h): every used role of every
// Linear, named by module path and role, put back into a fresh model as it was.
TEST(Fp8ScalingState, HistoriesRoundTripThroughRecords) {
  struct Reset {
    ~Reset() { set_fp8_delayed_scaling_override(-1); }
  } reset;
  set_fp8_delayed_scaling_override(1);
  Generator gen(5);
  TwoLinears m(gen), fresh(gen);
  Fp8History& ax = m.a->fp8_scaling()->x;
  ax.slots = Tensor::from_vector({0.5, 2.0, 0.25}, {3});
  ax.uses = 7;
  Fp8History& bgy = m.b->fp8_scaling()->gy;
  bgy.slots = Tensor::from_vector({3.0, 0.0, 1.5}, {3});
  bgy.uses = 2;
  const std::vector<nn::Fp8HistoryRecord> recs = nn::fp8_history_records(m);
  ASSERT_EQ(recs.size(), 2u) << "unused roles (a's w and gy, b's x and w) are left out";
  EXPECT_EQ(recs[0].name, "a/x");
  EXPECT_EQ(recs[1].name, "b/gy");
  EXPECT_EQ(recs[0].slots, (std::vector<float>{0.5f, 2.0f, 0.25f}));
  EXPECT_EQ(recs[1].uses, 2);
  ASSERT_TRUE(nn::fp8_history_records(fresh).empty());
  absl::Status s = nn::restore_fp8_histories(fresh, recs);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_NE(fresh.a->fp8_scaling_if_made(), nullptr);
  const Fp8History& got = fresh.a->fp8_scaling_if_made()->x;
  EXPECT_EQ(got.uses, 7);
  EXPECT_EQ(got.slots.to_vector(), (std::vector<double>{0.5, 2.0, 0.25}));
  EXPECT_EQ(fresh.b->fp8_scaling_if_made()->gy.uses, 2);
  EXPECT_EQ(fresh.b->fp8_scaling_if_made()->gy.slots.to_vector(),
            (std::vector<double>{3.0, 0.0, 1.5}));
  EXPECT_EQ(fresh.b->fp8_scaling_if_made()->x.uses, 0) << "b's x had no record";
  // Errors name the record.
  auto fails = [&](nn::Fp8HistoryRecord r, const std::string& want) {
    absl::Status e = nn::restore_fp8_histories(fresh, {r});
    EXPECT_FALSE(e.ok()) << want;
    EXPECT_NE(std::string(e.message()).find(want), std::string::npos) << e.message();
  };
  fails({"c/x", {1, 1, 1}, 1}, "no Linear layer 'c'");
  fails({"a/dx", {1, 1, 1}, 1}, "role 'dx'");
  fails({"a/w", {1, 1}, 1}, "2 amaxes");
  // With delayed scaling off there is nothing to restore into, and nothing is made.
  TwoLinears off_model(gen);
  set_fp8_delayed_scaling_override(0);
  EXPECT_TRUE(nn::restore_fp8_histories(off_model, recs).ok());
  EXPECT_EQ(off_model.a->fp8_scaling_if_made(), nullptr);
}

}  // namespace
}  // namespace kiln
