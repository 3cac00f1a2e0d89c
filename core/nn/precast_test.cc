// PrecastCache's bookkeeping on the CPU (the copies themselves are a GPU matter, tested by
// tests/gpu_train_test.cc and optim/optim_cuda_test.cc): CPU parameters are never cached, a scope
// over the cache uses its copies once (it marks them stale when it closes, so only an optimizer
// step that wrote them all makes them current again), and KILN_FUSED_PARAM_CAST is opt-in.
#include "core/nn/precast.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace kiln::nn {
namespace {

TEST(PrecastCache, CachesNoCpuParameters) {
  const Tensor w = Tensor::zeros({4, 8}, DType::kF32);
  PrecastCache cache({w}, DType::kBF16);
  EXPECT_EQ(cache.size(), 0);
  EXPECT_FALSE(cache.copy_of(w).defined());
  EXPECT_FALSE(cache.current());
}

TEST(PrecastCache, ScopeUsesTheCopiesOnce) {
  const Tensor w = Tensor::zeros({4, 8}, DType::kF32);
  PrecastCache cache({w}, DType::kF16);
  const int64_t casts = PrecastScope::casts();
  cache.set_current(true);  // as after an optimizer step that wrote every copy
  {
    PrecastScope scope(cache);
    EXPECT_TRUE(cache.current()) << "stale only once the scope is done with them";
    EXPECT_EQ(scope.size(), 0);
    EXPECT_FALSE(PrecastScope::lookup(w, DType::kF16).defined());
  }
  EXPECT_FALSE(cache.current()) << "the next scope must cast unless a step writes them again";
  EXPECT_EQ(PrecastScope::casts(), casts) << "nothing to cast on the CPU";
}

TEST(PrecastCache, FusedParamCastIsOnByDefault) {
  set_fused_param_cast_override(1);
  EXPECT_TRUE(fused_param_cast_enabled());
  set_fused_param_cast_override(0);
  EXPECT_FALSE(fused_param_cast_enabled());
  set_fused_param_cast_override(-1);
  if (std::getenv("KILN_FUSED_PARAM_CAST") == nullptr) EXPECT_TRUE(fused_param_cast_enabled());
}

}  // namespace
}  // namespace kiln::nn
