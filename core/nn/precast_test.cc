// PrecastCache's bookkeeping on the CPU (the copies themselves are a GPU matter, tested by
// tests/gpu_train_test.cc and optim/optim_cuda_test.cc): CPU parameters are never cached, a scope
// over the cache uses its copies once (it marks them stale when it closes, so only an optimizer
// step that wrote them all makes them current again), and KILN_FUSED_PARAM_CAST is opt-in;
// KILN_OVERLAP_OPTIM's grouping (contiguous_groups) and its off-by-default switch.
#include "core/nn/precast.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

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

TEST(ContiguousGroups, CutsInOrderIntoAtMostMaxGroupsOfRoughlyEqualSize) {
  // GPT-2-like: a big embedding, equal blocks, a small final norm. Target ceil(100 / 4) = 25.
  EXPECT_EQ(contiguous_groups({40, 10, 10, 10, 10, 10, 10, 0}, 4),
            (std::vector<int>{0, 1, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(contiguous_groups({5, 5, 5, 5}, 4), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(contiguous_groups({5, 5, 5, 5}, 1), (std::vector<int>{0, 0, 0, 0}));
  EXPECT_EQ(contiguous_groups({5, 5, 5, 5}, 16), (std::vector<int>{0, 1, 2, 3}));
  // Items of size 0 join the open group, so no group is empty of elements.
  EXPECT_EQ(contiguous_groups({0, 3, 0, 3, 0}, 2), (std::vector<int>{0, 0, 0, 1, 1}));
  EXPECT_EQ(contiguous_groups({0, 0}, 3), (std::vector<int>{0, 0}));
  EXPECT_TRUE(contiguous_groups({}, 3).empty());
  // Never more than max_groups, whatever the sizes.
  std::vector<int64_t> sizes;
  for (int i = 0; i < 200; ++i) sizes.push_back((i * 7919) % 1000);
  for (int max : {1, 2, 3, 7, 16, 64, 500}) {
    const std::vector<int> g = contiguous_groups(sizes, max);
    ASSERT_EQ(g.size(), sizes.size());
    EXPECT_EQ(g.front(), 0);
    for (size_t i = 1; i < g.size(); ++i) EXPECT_TRUE(g[i] == g[i - 1] || g[i] == g[i - 1] + 1);
    EXPECT_LE(g.back() + 1, max) << "max_groups " << max;
  }
}

TEST(PrecastCache, OverlapIsOnByDefaultAndACpuCacheHasNoGroups) {
  set_overlap_optim_override(1);
  EXPECT_TRUE(overlap_optim_enabled());
  set_overlap_optim_override(0);
  EXPECT_FALSE(overlap_optim_enabled());
  set_overlap_optim_override(-1);
  if (std::getenv("KILN_OVERLAP_OPTIM") == nullptr) EXPECT_TRUE(overlap_optim_enabled());
  const Tensor w = Tensor::zeros({4, 8}, DType::kF32);
  PrecastCache cache({w}, DType::kBF16);
  EXPECT_EQ(cache.groups(), 0);
  EXPECT_EQ(cache.group_of(w), -1);
  EXPECT_EQ(cache.side_stream(), nullptr);
  EXPECT_FALSE(cache.pending());
  const OverlapCounts before = overlap_counts();
  cache.join();  // nothing pending: a no-op
  {
    PrecastScope scope(cache);
    PrecastScope::await(w);
  }
  EXPECT_EQ(overlap_counts().joins, before.joins);
  EXPECT_EQ(overlap_counts().group_waits, before.group_waits);
}

}  // namespace
}  // namespace kiln::nn
