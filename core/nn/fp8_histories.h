// The fp8 delayed-scaling histories of a model's Linear layers (core/ops/fp8.h Fp8History) as
// plain records, so a checkpoint can keep them and a resume in the same layout can put them back:
// the resumed run then scales each fp8 tensor exactly as the uninterrupted run would have.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/nn/module.h"

namespace kiln::nn {

// One tensor role's history.
struct Fp8HistoryRecord {
  std::string name;          // "<module path>/<role>", role "x", "w" or "gy"
  std::vector<float> slots;  // (3) the ring of amaxes, as on the device
  int64_t uses = 0;          // quantizations so far (the ring's position)
};

// Every history the Linear layers under `root` hold, in module order (roles never used are left
// out). Copies each ring to the host (a device sync).
std::vector<Fp8HistoryRecord> fp8_history_records(Module& root);

// Puts `records` back into the Linear layers under `root`, each ring on its layer's weight device.
// Does nothing while delayed scaling is off (fp8_delayed_scaling()). An error names the record
// whose module is not a Linear under root, whose role is unknown, or whose ring is not 3 amaxes.
absl::Status restore_fp8_histories(Module& root, const std::vector<Fp8HistoryRecord>& records);

}  // namespace kiln::nn
