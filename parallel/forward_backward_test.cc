// NoPipeline (parallel/forward_backward.h) alone, with a recording GradSync and a one-parameter
// "model": every micro-batch is drawn, bracketed by begin_micro_step / end_micro_step with only the
// last marked, scaled by loss_scale / micro_batches before backward (the gradient is checked
// exactly: powers of two), and the unscaled losses are summed in f64.
#include "parallel/forward_backward.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/ops/elementwise.h"
#include "core/ops/reduce.h"

namespace kiln::parallel {
namespace {

class RecordingSync final : public GradSync {
 public:
  explicit RecordingSync(std::vector<std::string>* log) : log_(log) {}
  void begin_micro_step(bool last) override { log_->push_back(last ? "begin(last)" : "begin"); }
  void end_micro_step() override { log_->push_back("end"); }

 private:
  std::vector<std::string>* log_;
};

TEST(NoPipeline, HooksLossScalingAndLossSum) {
  for (int64_t n : {1, 2, 4}) {
    SCOPED_TRACE(n);
    std::vector<std::string> log;
    Tensor w = Tensor::from_vector({1.0, 2.0, 4.0}, {3}, DType::kF32);  // (3,)
    w.set_requires_grad(true);
    int drawn = 0;
    auto next = [&]() -> MicroBatch {
      log.push_back("next");
      const double k = ++drawn;  // micro-batch k holds x = (k, k, k)
      return {Tensor::from_vector({k, k, k}, {3}, DType::kF32), Tensor()};
    };
    NoPipeline fb([&](const Tensor& x, const Tensor&) {
      log.push_back("forward");
      return sum(mul(w, x));  // loss_k = 7k
    });
    RecordingSync sync(&log);
    const double loss_scale = 8.0;
    Tensor loss_sum = fb.run(next, n, loss_scale, sync);
    EXPECT_EQ(drawn, n);
    std::vector<std::string> want;
    for (int64_t i = 0; i < n; ++i)
      for (const char* e : {"next", i + 1 == n ? "begin(last)" : "begin", "forward", "end"})
        want.push_back(e);
    EXPECT_EQ(log, want);
    ASSERT_EQ(loss_sum.dtype(), DType::kF64);
    EXPECT_EQ(loss_sum.item(), 7.0 * n * (n + 1) / 2);  // sum of 7k, unscaled
    // d/dw of sum_k (loss_scale / n) * w . x_k = (loss_scale / n) * sum_k k, in every element.
    const double g = loss_scale / static_cast<double>(n) * (n * (n + 1) / 2);
    EXPECT_EQ(w.grad().to_vector(), std::vector<double>(3, g));
  }
}

}  // namespace
}  // namespace kiln::parallel
