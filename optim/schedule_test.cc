// Tests for the LR schedules, batch-size ramp and sequence-length curriculum.
#include "optim/schedule.h"

#include <gtest/gtest.h>

namespace kiln::optim {
namespace {

TEST(LrSchedule, WarmupCosineEndpoints) {
  LrSchedule s{LrKind::kCosine, 1.0, 0.1, 10, 110, 0.2};
  EXPECT_NEAR(s.at(0), 1.0 / 11, 1e-12);
  EXPECT_NEAR(s.at(9), 10.0 / 11, 1e-12);
  EXPECT_NEAR(s.at(10), 1.0, 1e-12);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);  // half way through the cosine
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  EXPECT_NEAR(s.at(1000), 0.1, 1e-12);
}

TEST(LrSchedule, WsdLinearConstant) {
  LrSchedule wsd{LrKind::kWsd, 2.0, 0.0, 0, 100, 0.2};
  EXPECT_EQ(wsd.at(50), 2.0);
  EXPECT_EQ(wsd.at(80), 2.0);
  EXPECT_NEAR(wsd.at(90), 1.0, 1e-12);
  EXPECT_NEAR(wsd.at(100), 0.0, 1e-12);
  LrSchedule lin{LrKind::kLinear, 1.0, 0.0, 0, 100, 0};
  EXPECT_NEAR(lin.at(25), 0.75, 1e-12);
  LrSchedule c{LrKind::kConstant, 3.0, 0.0, 0, 100, 0};
  EXPECT_EQ(c.at(99), 3.0);
}

TEST(BatchRamp, StagesAndMultiple) {
  BatchRamp r{8, 8, 32, 3000};  // 3 stages of 1000 tokens: 8, 16, 24, then 32
  EXPECT_EQ(r.at(0), 8);
  EXPECT_EQ(r.at(999), 8);
  EXPECT_EQ(r.at(1000), 16);
  EXPECT_EQ(r.at(2500), 24);
  EXPECT_EQ(r.at(3000), 32);
  EXPECT_EQ(r.at(1e9), 32);
  EXPECT_EQ(r.at(1000, 6), 12);  // rounded down to a multiple of micro*dp
  BatchRamp none{0, 1, 32, 0};
  EXPECT_EQ(none.at(0), 32);
}

TEST(SeqLenCurriculum, Kinds) {
  SeqLenCurriculum lin{CurriculumKind::kFixedLinear, 16, 128, 100, 8};
  EXPECT_EQ(lin.at(0), 16);
  EXPECT_EQ(lin.at(50), 72);
  EXPECT_EQ(lin.at(100), 128);
  EXPECT_EQ(lin.at(500), 128);
  SeqLenCurriculum root{CurriculumKind::kFixedRoot, 16, 128, 100, 8, 2};
  EXPECT_EQ(root.at(25), 72);  // sqrt(0.25) = 0.5
  SeqLenCurriculum disc{CurriculumKind::kFixedDiscrete, 16, 128, 0, 8, 2, {32, 64, 128}, {10, 20}};
  EXPECT_EQ(disc.at(5), 32);
  EXPECT_EQ(disc.at(15), 64);
  EXPECT_EQ(disc.at(25), 128);
  SeqLenCurriculum none;
  EXPECT_EQ(none.at(0), 1024);
}

}  // namespace
}  // namespace kiln::optim
