// Finding and (with --overwrite) removing an earlier run's files before a fresh run (see
// run_folder.h).
#include "launch/run_folder.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launch/checkpoint_manifest.h"

namespace kiln::launch {
namespace fs = std::filesystem;

std::vector<std::string> earlier_run_files(const TrainConfig& cfg) {
  std::vector<std::string> out;
  std::error_code ec;
  const std::string ckpt = cfg.checkpoint().dir();
  for (const auto& e : fs::directory_iterator(ckpt, ec)) {
    const std::string name = e.path().filename().string();
    if (parse_step_dir_name(name) >= 0 || name == "latest" || name.rfind(".tmp_step_", 0) == 0)
      out.push_back(e.path().string());
  }
  const std::string run = cfg.logging().run_dir();
  for (const auto& e : fs::directory_iterator(run, ec)) {
    const std::string name = e.path().filename().string();
    // Only a non-empty regular file holds records (a device such as /dev/full holds none).
    const bool metrics = name == "metrics.jsonl" && fs::is_regular_file(e.path(), ec) &&
                         fs::file_size(e.path(), ec) > 0;
    if (metrics || name.rfind("events.out.tfevents.", 0) == 0 || name == "loss.png" ||
        name == "loss.svg")
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status prepare_run_folder(const TrainConfig& cfg, bool overwrite, int rank) {
  if (absl::AsciiStrToLower(cfg.checkpoint().resume()) != "never") return absl::OkStatus();
  if (overwrite && rank != 0) return absl::OkStatus();
  const std::vector<std::string> files = earlier_run_files(cfg);
  if (files.empty()) return absl::OkStatus();
  const std::string& run = cfg.logging().run_dir();
  if (!overwrite) {
    std::vector<std::string> shown(files.begin(),
                                   files.begin() + std::min<size_t>(4, files.size()));
    if (files.size() > shown.size()) shown.push_back(absl::StrCat("... ", files.size(), " in all"));
    return absl::FailedPreconditionError(absl::StrCat(
        "logging.run_dir ", run, " holds an earlier run (", absl::StrJoin(shown, ", "),
        ") and checkpoint.resume is never: resume it (--resume auto), choose a fresh "
        "logging.run_dir, or pass --overwrite to delete that run's checkpoints and metrics"));
  }
  for (const std::string& f : files) {
    std::error_code ec;
    fs::remove_all(f, ec);
    if (ec) return absl::UnavailableError("--overwrite: cannot remove " + f + ": " + ec.message());
  }
  std::printf(
      "kiln: --overwrite: removed the earlier run's %zu checkpoint and metrics files in %s\n",
      files.size(), run.c_str());
  return absl::OkStatus();
}

}  // namespace kiln::launch
