// Tests for the metrics writers: TensorBoard records read back (CRC-checked), CRC32C test vector,
// JSONL lines, and the loss plot files.
#include "launch/metrics.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "launch/plot.h"

namespace kiln::launch {
namespace {

std::string temp_dir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/kiln_" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(Metrics, Crc32cKnownVector) {
  // RFC 3720's check value for "123456789".
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
}

TEST(Metrics, TensorBoardScalarsRoundTrip) {
  const std::string dir = temp_dir("tb");
  TensorBoardWriter w;
  ASSERT_TRUE(w.open(dir).ok());
  for (int s = 0; s < 5; ++s) w.scalar("train/loss", 10.0 - s, s);
  ASSERT_TRUE(w.flush().ok());
  std::map<std::string, std::vector<std::pair<int64_t, double>>> got;
  ASSERT_TRUE(read_tensorboard_scalars(w.path(), &got).ok());
  ASSERT_EQ(got["train/loss"].size(), 5u);
  EXPECT_EQ(got["train/loss"][3], (std::pair<int64_t, double>{3, 7.0}));
  // A flipped byte is detected by the record CRC.
  {
    std::fstream f(w.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('\x7f');
  }
  got.clear();
  EXPECT_FALSE(read_tensorboard_scalars(w.path(), &got).ok());
}

TEST(Metrics, JsonlAndPlot) {
  const std::string dir = temp_dir("jsonl");
  {
    MetricsLogger m;
    ASSERT_TRUE(m.open(dir, true, false, false).ok());
    for (int s = 0; s < 20; ++s) m.log("train", s, {{"loss", 5.0 / (1 + s)}, {"lr", 1e-3}});
    m.log("val", 19, {{"loss", 0.4}});
    m.log_text("sample", 19, "text", "a \"quoted\"\nline");
  }
  std::ifstream in(dir + "/metrics.jsonl");
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first, "{\"kind\":\"train\",\"step\":0,\"loss\":5,\"lr\":0.001}");
  auto series = read_loss_series(dir + "/metrics.jsonl");
  ASSERT_TRUE(series.ok());
  ASSERT_EQ(series->size(), 2u);
  EXPECT_EQ((*series)[0].points.size(), 20u);
  std::string png = render_png(*series, 300, 200, "t");
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  // Stored deflate: the IDAT holds every pixel row (3*300+1 bytes each) plus headers.
  EXPECT_GT(png.size(), 200u * (3 * 300 + 1));
  EXPECT_NE(render_svg(*series, 300, 200, "t").find("<polyline"), std::string::npos);
}

// A full disk (metrics.jsonl on /dev/full): flush fails naming the file and the OS error, instead
// of records being lost quietly.
TEST(Metrics, WriteErrorIsReported) {
  const std::string dir = temp_dir("full");
  std::filesystem::create_symlink("/dev/full", dir + "/metrics.jsonl");
  MetricsLogger m;
  ASSERT_TRUE(m.open(dir, true, false, /*append=*/true).ok());
  m.log("train", 0, {{"loss", 1.0}});
  absl::Status s = m.flush();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("metrics.jsonl"), std::string::npos) << s;
  EXPECT_NE(s.message().find("No space left"), std::string::npos) << s;
}

}  // namespace
}  // namespace kiln::launch
