// Training runs the parallel-layout tests share (see train_run.h).
#include "launch/testing/train_run.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace kiln::testing {

launch::TrainSummary train_quietly(const TrainConfig& cfg, const parallel::World& world,
                                   const std::function<void(const launch::Trainer&)>& after_run) {
  launch::Trainer t(cfg, world);
  t.set_quiet(true);
  absl::Status s = t.init();
  KILN_CHECK(s.ok()) << s.message();
  absl::StatusOr<launch::TrainSummary> r = t.run();
  KILN_CHECK(r.ok()) << r.status().message();
  if (after_run) after_run(t);
  return *std::move(r);
}

double max_relative_loss_difference(const launch::TrainSummary& got,
                                    const launch::TrainSummary& ref, int steps) {
  KILN_CHECK_EQ(got.train_losses.size(), static_cast<size_t>(steps));
  KILN_CHECK_EQ(ref.train_losses.size(), static_cast<size_t>(steps));
  double worst = 0;
  for (int i = 0; i < steps; ++i)
    worst = std::max(worst, std::fabs(got.train_losses[i] - ref.train_losses[i]) /
                                std::fabs(ref.train_losses[i]));
  EXPECT_EQ(got.val_losses.size(), ref.val_losses.size());
  for (size_t i = 0; i < got.val_losses.size() && i < ref.val_losses.size(); ++i)
    worst = std::max(worst, std::fabs(got.val_losses[i].second - ref.val_losses[i].second) /
                                std::fabs(ref.val_losses[i].second));
  return worst;
}

}  // namespace kiln::testing
