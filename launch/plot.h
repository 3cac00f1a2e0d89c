// `kiln plot RUN_DIR`: reads RUN_DIR/metrics.jsonl and writes the loss curves (train and validation
// against step) as RUN_DIR/loss.png and RUN_DIR/loss.svg, which any image viewer or browser opens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kiln::launch {

struct Series {
  std::string label;
  uint32_t rgb;
  std::vector<std::pair<double, double>> points;  // (x, y)
};

// Rasterises the series on a white canvas with the title above, axes labelled "step" and "loss",
// grid, numeric tick labels and a legend; PNG bytes.
std::string render_png(const std::vector<Series>& series, int width, int height,
                       const std::string& title);
std::string render_svg(const std::vector<Series>& series, int width, int height,
                       const std::string& title);
// Minimal PNG encoder (8-bit RGB, zlib-compressed). rgb.size() == 3 * w * h.
std::string encode_png(const std::vector<uint8_t>& rgb, int w, int h);

// Reads the train/val loss series from a metrics.jsonl file, by step; the last record of a step
// wins (a resumed run logs the steps after its checkpoint again).
absl::StatusOr<std::vector<Series>> read_loss_series(const std::string& jsonl_path);

int plot_main(int argc, char** argv);

}  // namespace kiln::launch
