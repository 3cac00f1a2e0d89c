// exp_f32 against std::exp over the range the kernels use, and its special values.
#include "core/cpu/fast_math.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kiln::cpu {
namespace {

TEST(FastMath, ExpF32CloseToStdExp) {
  double worst = 0;
  for (float x = -87.0f; x < 88.5f; x += 0.0137f) {
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(exp_f32(x) - ref) / ref);
  }
  EXPECT_LT(worst, 2.4e-7);
}

TEST(FastMath, ExpF32SpecialValues) {
  EXPECT_EQ(exp_f32(0.0f), 1.0f);
  EXPECT_EQ(exp_f32(-INFINITY), 0.0f);
  EXPECT_EQ(exp_f32(-100.0f), 0.0f);
  EXPECT_EQ(exp_f32(INFINITY), INFINITY);
  EXPECT_EQ(exp_f32(100.0f), INFINITY);
}

}  // namespace
}  // namespace kiln::cpu
