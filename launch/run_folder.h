// The run folder (logging.run_dir, checkpoint.dir) as `kiln train` finds it: a run that starts
// from scratch (checkpoint.resume "never") never writes over an earlier run's checkpoints and
// metrics (retention would keep the old run's higher steps and delete the new run's; metrics.jsonl
// would mix both), unless told to with --overwrite, which removes that run's files first.
// Resuming ("auto" or a path) appends to the folder. The reading commands (eval, sample, logits,
// export) never write into it (Trainer::set_read_only).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/config.pb.h"

namespace kiln::launch {

// The files and directories an earlier run left: checkpoint.dir's step_* directories, `latest`
// and temporaries; logging.run_dir's metrics.jsonl (when not empty), TensorBoard event files and
// loss plots. Paths as found, sorted.
std::vector<std::string> earlier_run_files(const TrainConfig& cfg);

// Under checkpoint.resume "never": an error naming the folder and what it holds when an earlier
// run is there, unless `overwrite`; with `overwrite`, rank 0 removes those files (every other rank
// returns OK at once). Any other resume mode: OK, nothing touched.
absl::Status prepare_run_folder(const TrainConfig& cfg, bool overwrite, int rank);

}  // namespace kiln::launch
