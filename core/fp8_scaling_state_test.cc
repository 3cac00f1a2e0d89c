// nn::Linear's fp8 delayed-scaling state (core/nn/layers.h, core/ops/fp8.h), on the CPU: absent
// when delayed scaling is off (KILN_FP8_DELAYED_SCALING=0); with it, made once and shared by every
// later forward and by the backward that holds it (the GPU side is tested in
// core/ops/fp8_delayed_cuda_test.cc).
#include <gtest/gtest.h>

#include <memory>

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

}  // namespace
}  // namespace kiln
