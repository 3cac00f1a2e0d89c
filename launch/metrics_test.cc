// Tests for the metrics writers: TensorBoard records read back (CRC-checked), CRC32C test vector,
// JSONL lines, and the loss plot files.
#include "launch/metrics.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "launch/plot.h"
#include "launch/step_phases.h"
#include "launch/trainer_log.h"

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

// The PNG's pixels: IHDR size and the inflated IDAT rows (filter byte + RGB), checked by zlib.
std::vector<uint8_t> decode_png(const std::string& png, int* w, int* h) {
  auto be32 = [&](size_t p) {
    return (uint32_t(uint8_t(png[p])) << 24) | (uint32_t(uint8_t(png[p + 1])) << 16) |
           (uint32_t(uint8_t(png[p + 2])) << 8) | uint32_t(uint8_t(png[p + 3]));
  };
  std::string idat;
  for (size_t p = 8; p + 8 <= png.size();) {
    const uint32_t n = be32(p);
    const std::string type = png.substr(p + 4, 4);
    if (type == "IHDR") *w = be32(p + 8), *h = be32(p + 12);
    if (type == "IDAT") idat += png.substr(p + 8, n);
    p += 12 + n;
  }
  std::vector<uint8_t> raw(static_cast<size_t>(*h) * (3 * *w + 1));
  uLongf len = raw.size();
  EXPECT_EQ(uncompress(raw.data(), &len, reinterpret_cast<const Bytef*>(idat.data()), idat.size()),
            Z_OK);
  EXPECT_EQ(len, raw.size());
  return raw;
}

// Non-white pixels in the box [x0, x1) x [y0, y1).
int ink(const std::vector<uint8_t>& raw, int w, int x0, int x1, int y0, int y1) {
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x)
      for (int c = 0; c < 3; ++c) n += raw[y * (3 * w + 1) + 1 + 3 * x + c] != 255;
  return n;
}

TEST(Plot, PngIsCompressedWithTitleAndYLabel) {
  std::vector<std::pair<double, double>> pts;
  for (int s = 1; s <= 500; ++s) pts.emplace_back(s, 5.0 / std::sqrt(s));
  const std::string png = render_png({{"train loss", 0x1f77b4, pts}}, 900, 500, "loss: runs/x");
  int w = 0, h = 0;
  const std::vector<uint8_t> raw = decode_png(png, &w, &h);
  ASSERT_EQ(w, 900);
  ASSERT_EQ(h, 500);
  // Compressed: a tenth of the raw pixels at most (stored blocks were 1.35 MB for 900 x 500).
  EXPECT_LT(png.size(), raw.size() / 10) << png.size();
  EXPECT_GT(ink(raw, w, 300, 600, 0, 20), 20) << "no title above the plot";
  EXPECT_GT(ink(raw, w, 0, 14, 150, 350), 20) << "no y-axis label left of the ticks";
}

TEST(Plot, LastRecordPerStepAfterAResume) {
  const std::string dir = temp_dir("resume_plot");
  {
    MetricsLogger m;
    ASSERT_TRUE(m.open(dir, true, false, false).ok());
    for (int s = 1; s <= 6; ++s) m.log("train", s, {{"loss", 10.0 + s}});
    m.log("val", 4, {{"loss", 9.0}});
  }
  {  // killed after step 6, resumed from the checkpoint of step 4: steps 5 and 6 run again
    MetricsLogger m;
    ASSERT_TRUE(m.open(dir, true, false, true).ok());
    for (int s = 5; s <= 8; ++s) m.log("train", s, {{"loss", 20.0 + s}});
  }
  auto series = read_loss_series(dir + "/metrics.jsonl");
  ASSERT_TRUE(series.ok());
  const std::vector<std::pair<double, double>> want = {{1, 11}, {2, 12}, {3, 13}, {4, 14},
                                                       {5, 25}, {6, 26}, {7, 27}, {8, 28}};
  EXPECT_EQ((*series)[0].points, want);
}

TEST(Metrics, TensorBoardPurgesStepsARunRepeats) {
  const std::string dir = temp_dir("tb_resume");
  TensorBoardWriter a, b;
  ASSERT_TRUE(a.open(dir, 0).ok());
  for (int s = 1; s <= 6; ++s) a.scalar("train/loss", 10.0 + s, s);
  a.flush();
  std::filesystem::create_directories(dir + "/b");
  ASSERT_TRUE(b.open(dir + "/b", 5).ok());  // resumed: its first step is 5
  for (int s = 5; s <= 7; ++s) b.scalar("train/loss", 20.0 + s, s);
  b.flush();
  // TensorBoard reads the files in order; SessionLog START at step 5 purges steps >= 5 before.
  std::map<std::string, std::vector<std::pair<int64_t, double>>> got;
  ASSERT_TRUE(read_tensorboard_scalars(a.path(), &got).ok());
  ASSERT_TRUE(read_tensorboard_scalars(b.path(), &got).ok());
  const std::vector<std::pair<int64_t, double>> want = {{1, 11}, {2, 12}, {3, 13}, {4, 14},
                                                        {5, 25}, {6, 26}, {7, 27}};
  EXPECT_EQ(got["train/loss"], want);
}

// Seven steps whose forward + backward launch sleeps 20 ms and whose optimizer launch sleeps
// 8 ms: the summary puts each sleep in its own phase. Sleeps never end early; the medians (of
// steps 2-7) keep one step delayed by a loaded machine from moving the bounds.
TEST(StepPhases, EachSleepLandsInItsPhase) {
  StepPhases phases;
  auto sleep_ms = [](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); };
  for (int step = 0; step < 7; ++step) {
    phases.mark(StepPhases::kStart);
    sleep_ms(20);
    phases.mark(StepPhases::kLaunched);
    phases.mark(StepPhases::kLoss);
    phases.mark(StepPhases::kNorm);
    sleep_ms(8);
    phases.mark(StepPhases::kStepped);
    phases.mark(StepPhases::kSynced);
  }
  const std::string s = phases.summary();
  std::cout << s;
  auto ms_of = [&](const std::string& name) {
    const size_t at = s.find(name);
    EXPECT_NE(at, std::string::npos) << name;
    return at == std::string::npos ? -1.0 : std::stod(s.substr(at + name.size()));
  };
  EXPECT_GE(ms_of("launch forward + backward"), 20.0);
  EXPECT_GE(ms_of("launch the optimizer step"), 8.0);
  EXPECT_LT(ms_of("launch the optimizer step"), 20.0);
  for (const char* idle : {"between steps (log, data, checkpoint check)", "wait for the loss",
                           "gradient norm (launch + wait)", "wait for the step's end"})
    EXPECT_LT(ms_of(idle), 8.0) << idle;
  EXPECT_EQ(StepPhases().summary(), "");  // nothing before two steps
}

TEST(Mfu, PeakOfTheActualGpu) {
  EXPECT_EQ(peak_dense_bf16_flops("NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(peak_dense_bf16_flops("NVIDIA H200"), 989e12);
  EXPECT_EQ(peak_dense_bf16_flops("NVIDIA H100 PCIe"), 756e12);
  EXPECT_EQ(peak_dense_bf16_flops("NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(peak_dense_bf16_flops("NVIDIA L4"), 121e12);
  EXPECT_EQ(peak_dense_bf16_flops("Some Future GPU"), 0);  // unknown: no MFU, not a guess
  // The config wins, then KILN_PEAK_FLOPS, then the table; the CPU has none.
  EXPECT_EQ(mfu_peak_flops(123e12, true, "NVIDIA H100 80GB HBM3"), 123e12);
  EXPECT_EQ(mfu_peak_flops(0, true, "NVIDIA A100-SXM4-40GB"), 312e12);
  EXPECT_EQ(mfu_peak_flops(0, false, "cpu"), 0);
  setenv("KILN_PEAK_FLOPS", "5e14", 1);
  EXPECT_EQ(mfu_peak_flops(0, true, "NVIDIA A100-SXM4-40GB"), 5e14);
  unsetenv("KILN_PEAK_FLOPS");
}

}  // namespace
}  // namespace kiln::launch
