// Training runs the parallel-layout tests share, written once: a quiet Trainer run that dies
// naming the problem, and the relative loss difference of one run to a reference run.
#pragma once

#include <functional>

#include "launch/trainer.h"
#include "parallel/world.h"

namespace kiln::testing {

// Trains `cfg` on `world` without console output; dies with the Status message when init or run
// fails. `after_run`, when given, sees the trained Trainer (e.g. to read its stage split).
launch::TrainSummary train_quietly(
    const TrainConfig& cfg, const parallel::World& world,
    const std::function<void(const launch::Trainer&)>& after_run = nullptr);

// Max relative difference of `got` to `ref` over the training losses (exactly `steps` of each:
// dies otherwise) and the validation losses (a different count fails the calling test).
double max_relative_loss_difference(const launch::TrainSummary& got,
                                    const launch::TrainSummary& ref, int steps);

}  // namespace kiln::testing
