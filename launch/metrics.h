// Run metrics: one human-readable line per step on stdout, a JSONL file, and TensorBoard event
// files (TFRecord-framed Event protos with masked CRC32C), all under the run directory.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace kiln::launch {

// CRC32C (Castagnoli) and TFRecord's masked form.
uint32_t crc32c(const void* data, size_t n);
uint32_t masked_crc32c(const void* data, size_t n);

class TensorBoardWriter {
 public:
  // Creates RUN_DIR/events.out.tfevents.<time>.<host> and writes the file-version event; with
  // purge_from >= 0 also a SessionLog START at that step, which makes TensorBoard drop the
  // records earlier files hold at steps >= purge_from (a resumed run logs them again).
  absl::Status open(const std::string& run_dir, int64_t purge_from = -1);
  void scalar(const std::string& tag, double value, int64_t step);
  // Fails (naming the file and the OS error: a full disk) once any write so far has failed.
  absl::Status flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& bytes);
  std::ofstream out_;
  std::string path_;
};

// Reads back the scalars of an event file (tests) into `out`: tag -> [(step, value)]; a SessionLog
// START at step S first removes every point at step >= S from `out` (what TensorBoard shows when
// the files of a run are read in order).
absl::Status read_tensorboard_scalars(
    const std::string& path, std::map<std::string, std::vector<std::pair<int64_t, double>>>* out);

class MetricsLogger {
 public:
  // purge_from: TensorBoardWriter::open's (the first step this process logs when it appends).
  absl::Status open(const std::string& run_dir, bool jsonl, bool tensorboard, bool append,
                    int64_t purge_from = -1);
  // Writes one record: to JSONL as {"kind":..., "step":..., key: value...} and each value to
  // TensorBoard as KIND/KEY.
  void log(const std::string& kind, int64_t step,
           const std::vector<std::pair<std::string, double>>& kv);
  void log_text(const std::string& kind, int64_t step, const std::string& key,
                const std::string& text);
  // Pushes the records to the files; fails, naming the file and the OS error (a full disk), once
  // any write so far has failed (the Trainer then stops the run: records are never lost quietly).
  absl::Status flush();

 private:
  std::ofstream jsonl_;
  std::string jsonl_path_;
  bool has_jsonl_ = false, has_tb_ = false;
  TensorBoardWriter tb_;
};

}  // namespace kiln::launch
