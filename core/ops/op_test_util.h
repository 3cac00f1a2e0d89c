// Test helpers shared by the tests of reduce, layernorm, rmsnorm, activation, softmax and
// embedding: the thread-count determinism check and the gradcheck assertion.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "core/testing/gradcheck.h"
#include "core/thread_pool.h"

namespace kiln::testing {

// Runs f with 1 thread and with 4 threads; every returned tensor must be bit-identical.
inline void expect_thread_count_independent(const std::function<std::vector<Tensor>()>& f) {
  const int prev = num_threads();
  set_num_threads(1);
  std::vector<Tensor> one = f();
  set_num_threads(4);
  std::vector<Tensor> four = f();
  set_num_threads(prev);
  ASSERT_EQ(one.size(), four.size());
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_TRUE(bit_equal(one[i], four[i])) << "output " << i << " differs with the thread count";
}

// gradcheck(f, inputs, eps) must give max_rel_error <= 1e-6; the error is recorded as a test
// property (visible with --gtest_output=xml) under `what`.
inline void expect_gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs,
                             const std::string& what, double eps = 1e-6) {
  GradCheckResult r = gradcheck(f, inputs, eps);
  EXPECT_LE(r.max_rel_error, 1e-6) << what << ": " << r.worst;
  EXPECT_GT(r.checked, 0) << what;
  std::ostringstream os;
  os << r.max_rel_error;
  ::testing::Test::RecordProperty("gradcheck_" + what, os.str());
}

}  // namespace kiln::testing
