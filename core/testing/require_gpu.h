// The one place GPU tests decide to skip: without a visible GPU they skip, unless the
// environment sets KILN_REQUIRE_GPU=1 (benchmarks/gpu_suite.sh does), which turns every such skip
// into a failure, so that a GPU host with a broken driver or a missing device cannot pass by
// skipping. Header-only, no CUDA includes: usable from any test binary.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

namespace kiln::testing {

// True when KILN_REQUIRE_GPU is set to "1".
inline bool gpu_required() {
  const char* v = std::getenv("KILN_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace kiln::testing

// Skips the current test with `msg` (a string literal), or fails it when KILN_REQUIRE_GPU=1.
// Use in a TEST body or SetUp (it returns from the enclosing void function).
#define KILN_GPU_SKIP(msg)                                                   \
  do {                                                                       \
    if (::kiln::testing::gpu_required()) {                                   \
      GTEST_FAIL() << "KILN_REQUIRE_GPU=1 but the test would skip: " << msg; \
    }                                                                        \
    GTEST_SKIP() << msg;                                                     \
  } while (0)
