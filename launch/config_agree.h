// Every rank must train the same resolved config: at start-up each rank compares a hash of its
// config (printed as textproto) with rank 0's; when one differs the ranks exchange the texts
// (lengths first, then contents, so that ranks whose configs differ never disagree on a message
// size inside MPI) and all of them stop with the same message naming the first field that differs.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "proto/config.pb.h"

namespace kiln::launch {

// Collective over `world`. FailedPrecondition on every rank when any rank's config differs from
// rank 0's: "rank R: FIELD is A there but B on rank 0".
absl::Status check_config_agreement(const TrainConfig& cfg, parallel::Communicator& world);

// The first field (dotted path, "optimizer.lr") in which two printed configs differ, with its
// value in each ("optimizer.lr: 0.002" / "optimizer.lr: 0.001"); empty when they are equal.
struct ConfigDifference {
  std::string field, mine, theirs;
};
ConfigDifference first_difference(const std::string& mine, const std::string& theirs);

}  // namespace kiln::launch
