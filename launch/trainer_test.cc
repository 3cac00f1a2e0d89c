// Trainer tests: golden first-20 losses of a tiny GPT-2 on fixed synthetic data, bit-identical
// repeat runs, the loss falling, schedules applied, and the CLI rejecting bad configs before
// training starts with a message naming the field.
#include "launch/trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "core/json.h"
#include "launch/config.h"
#include "launch/testing/files.h"
#include "launch/testing/tiny_config.h"
#include "parallel/data_parallel.h"

// The running OpenBLAS's core and build (libopenblas, which kiln always links; declared here
// rather than through <cblas.h>, which may be another vendor's header on some systems).
extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace kiln::launch {
namespace {

using kiln::testing::run_kiln;

// The shared tiny run (launch/testing/tiny_config.h), named "golden", writing metrics.jsonl.
TrainConfig tiny_config(const std::string& run_dir) {
  return testing::tiny_config(run_dir, R"pb(name: "golden"
                                            logging { jsonl: true })pb");
}

TrainSummary train(const TrainConfig& cfg) {
  Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  KILN_CHECK(s.ok()) << s.message();
  auto r = t.run();
  KILN_CHECK(r.ok()) << r.status().message();
  return *r;
}

// The goldens below were recorded with this OpenBLAS core and version. OpenBLAS picks its sgemm
// kernel by CPU at run time (DYNAMIC_ARCH: Haswell, SkylakeX, Zen, ...) and kernels block and
// accumulate differently, so the last bits of f32 products differ between cores (and may between
// versions); kiln's own kernels are fixed by the build (-march=x86-64-v3, -ffp-contract=off).
constexpr char kGoldenCore[] = "SkylakeX";
constexpr char kGoldenOpenBlas[] = "OpenBLAS 0.3.21 ";  // prefix of openblas_get_config()

// First 20 training losses of tiny_config(), to 17 significant digits (exact doubles). Regenerate
// with KILN_PRINT_GOLDEN=1 launch_tests --gtest_filter=Trainer.GoldenLossesAndBitIdenticalRuns.
const std::array<double, 20> kGolden = {
    4.5884411334991455, 4.5180130004882812, 4.4530012607574463, 4.4129395484924316,
    4.4519176483154297, 4.3782005310058594, 4.3653349876403809, 4.2961382865905762,
    4.2463588714599609, 4.1865906715393066, 4.1388719081878662, 3.9975379705429077,
    4.0487388372421265, 4.0964412689208984, 4.0237976312637329, 3.9337954521179199,
    4.0060347318649292, 4.0238044261932373, 3.8502248525619507, 3.9187741279602051};

TEST(Trainer, GoldenLossesAndBitIdenticalRuns) {
  const std::string dir = ::testing::TempDir() + "/kiln_golden";
  TrainSummary a = train(tiny_config(dir + "a"));
  TrainSummary b = train(tiny_config(dir + "b"));
  ASSERT_EQ(a.train_losses.size(), 20u);
  ASSERT_EQ(b.train_losses.size(), 20u);
  // Bit-identical between two runs in one process.
  for (size_t i = 0; i < 20; ++i)
    EXPECT_EQ(std::memcmp(&a.train_losses[i], &b.train_losses[i], sizeof(double)), 0)
        << "step " << i << ": " << a.train_losses[i] << " vs " << b.train_losses[i];
  const std::string core = openblas_get_corename(), config = openblas_get_config();
  if (const char* env = std::getenv("KILN_PRINT_GOLDEN"); env && std::string(env) == "1") {
    std::printf("constexpr char kGoldenCore[] = \"%s\";\n", core.c_str());
    const std::string version = config.substr(0, config.find(' ', config.find(' ') + 1) + 1);
    std::printf("constexpr char kGoldenOpenBlas[] = \"%s\";  // %s\n", version.c_str(),
                config.c_str());
    std::printf("const std::array<double, 20> kGolden = {");
    for (size_t i = 0; i < 20; ++i) std::printf("%s%.17g", i ? ", " : "", a.train_losses[i]);
    std::printf("};\n");
  }
  const bool same_blas = core == kGoldenCore && config.rfind(kGoldenOpenBlas, 0) == 0;
  if (!same_blas) {
    std::printf(
        "note: OpenBLAS core %s (%s), goldens recorded on %s (%s...): a different sgemm kernel "
        "rounds differently, so the losses are compared within a relative 1e-5, not bit for "
        "bit\n",
        core.c_str(), config.c_str(), kGoldenCore, kGoldenOpenBlas);
  }
  for (size_t i = 0; i < 20; ++i) {
    if (same_blas) {
      // Same kernels, same data, same seed: the same bits.
      EXPECT_EQ(std::memcmp(&a.train_losses[i], &kGolden[i], sizeof(double)), 0)
          << "step " << i << ": " << absl::StrFormat("%.17g", a.train_losses[i]) << " vs golden "
          << absl::StrFormat("%.17g", kGolden[i]);
    } else {
      // Another sgemm kernel changes the last bits of f32 products; over 20 steps that stays far
      // below 1e-5 relative (~4e-5 absolute; OPENBLAS_CORETYPE=Haswell, Zen, Sandybridge, Nehalem
      // and Prescott on the recording machine moved them by at most 6.1e-8 relative), while a
      // change to the model, data or optimizer moves these losses by far more.
      EXPECT_NEAR(a.train_losses[i], kGolden[i], 1e-5 * std::abs(kGolden[i])) << "step " << i;
    }
  }
}

TEST(Trainer, LossFallsAndEvalRuns) {
  TrainConfig cfg = tiny_config(::testing::TempDir() + "/kiln_falls");
  cfg.mutable_training()->set_max_steps(60);
  TrainSummary s = train(cfg);
  ASSERT_GE(s.val_losses.size(), 2u);
  EXPECT_LT(s.val_losses.back().second, 0.8 * s.val_losses.front().second);
  EXPECT_EQ(s.tokens, 60 * 8 * 16);
  // Every train record of metrics.jsonl carries the memory the allocator reports: the peak in use
  // and what it holds from the system (in use + cached), which is never below the peak for the
  // CPU's caching allocator (it keeps what it took).
  std::ifstream in(cfg.logging().run_dir() + "/metrics.jsonl");
  int records = 0;
  for (std::string line; std::getline(in, line);) {
    absl::StatusOr<JsonValue> v = parse_json(line);
    ASSERT_TRUE(v.ok()) << v.status().message() << ": " << line;
    const JsonValue* kind = v->find("kind");
    if (kind == nullptr || kind->str != "train") continue;
    const JsonValue *peak = v->find("mem_peak_mib"), *reserved = v->find("mem_reserved_mib");
    ASSERT_TRUE(peak && reserved && peak->is_number() && reserved->is_number()) << line;
    EXPECT_GT(peak->number, 0.0) << line;
    EXPECT_GE(reserved->number, peak->number) << line;
    ++records;
  }
  EXPECT_EQ(records, 60);
}

// KILN_LAZY_ZERO_GRAD: zero_grad marking stage 0's gradients stale (the next backward writes
// its first gradient over each, the second micro-step adds) against zeroing the buffers: the
// same training and validation losses, value for value, and a step's gradients read as zeros
// once zero_grad has marked them.
TEST(Trainer, LazyZeroGradTrainsAsZeroingTheBuffers) {
  std::vector<TrainSummary> runs;
  for (int lazy : {0, 1}) {
    parallel::set_lazy_zero_grad_override(lazy);
    TrainConfig cfg = tiny_config(::testing::TempDir() + "/kiln_lazy_zero_" + std::to_string(lazy));
    Trainer t(cfg, parallel::World{});
    t.set_quiet(true);
    ASSERT_TRUE(t.init().ok());
    auto r = t.run();
    ASSERT_TRUE(r.ok()) << r.status().message();
    runs.push_back(*r);
    parallel::DataParallel& dp = t.data_parallel();
    EXPECT_EQ(dp.marks_grads_stale(), lazy == 1);
    for (const nn::Parameter& p : dp.optimizer().params()) {
      EXPECT_EQ(p.tensor.grad_stale(), lazy == 1) << p.name;
      const std::vector<double> g = p.tensor.grad().to_vector();
      EXPECT_EQ(std::count_if(g.begin(), g.end(), [](double v) { return v != 0; }), 0) << p.name;
    }
  }
  parallel::set_lazy_zero_grad_override(-1);
  ASSERT_EQ(runs[0].train_losses.size(), 20u);
  EXPECT_EQ(runs[0].train_losses, runs[1].train_losses);
  ASSERT_FALSE(runs[0].val_losses.empty());
  EXPECT_EQ(runs[0].val_losses, runs[1].val_losses);
}

TEST(Trainer, RampAndCurriculumChangeTokensPerStep) {
  TrainConfig cfg = tiny_config(::testing::TempDir() + "/kiln_ramp");
  auto* sc = cfg.mutable_schedule();
  sc->mutable_batch_ramp()->set_start(4);
  sc->mutable_batch_ramp()->set_increment(4);
  sc->mutable_batch_ramp()->set_ramp_tokens(400);
  sc->mutable_seq_len()->set_kind(SeqLenCurriculum::FIXED_LINEAR);
  sc->mutable_seq_len()->set_min_len(8);
  sc->mutable_seq_len()->set_max_len(16);
  sc->mutable_seq_len()->set_steps(10);
  ASSERT_TRUE(resolve_config(&cfg).ok());
  ASSERT_TRUE(validate_config(cfg).ok()) << validate_config(cfg).message();
  TrainSummary s = train(cfg);
  // Fewer tokens than 20 full steps: small batches and short sequences early on.
  EXPECT_LT(s.tokens, 20 * 8 * 16);
  EXPECT_GT(s.tokens, 0);
}

std::string write_config(const std::string& name, const std::string& body) {
  const std::string path = ::testing::TempDir() + "/" + name + ".textproto";
  std::ofstream(path) << body;
  return path;
}

const char* kGoodBody = R"pb(
  model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 }
  data { synthetic: true seq_len: 16 }
  training { global_batch_size: 8 max_steps: 2 }
  parallel { micro_batch_size: 4 }
  device: CPU
)pb";

TEST(TrainCli, RejectsBadConfigsNamingTheField) {
  struct Case {
    std::string body, extra, expect;
  };
  const std::vector<Case> cases = {
      {"model { preset: \"gpt2-tiny\" n_layers: 2 }", "", "n_layers"},
      {kGoodBody, "--set optimizer.lr=-1", "optimizer.lr"},
      {kGoodBody, "--set training.global_batch_size=6", "global_batch_size"},
      {kGoodBody, "--set parallel.tp=3", "parallel.tp"},
      {kGoodBody, "--set data.synthetic=false --set data.train_shards=/nonexistent/x_*.bin",
       "data.train_shards"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string path = write_config("bad" + std::to_string(i++), c.body);
    auto [rc, out] = run_kiln("train --config " + path + " " + c.extra);
    EXPECT_NE(rc, 0) << out;
    EXPECT_THAT(out, ::testing::HasSubstr(c.expect)) << out;
    EXPECT_THAT(out, ::testing::Not(::testing::HasSubstr("step "))) << "training started: " << out;
  }
}

TEST(TrainCli, HelpAndPrintConfig) {
  auto [rc, out] = run_kiln("train --help");
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(out, ::testing::HasSubstr("--config FILE"));
  const std::string path = write_config("good", kGoodBody);
  auto [rc2, out2] = run_kiln("train --config " + path + " --print-config --set optimizer.lr=0.01");
  EXPECT_EQ(rc2, 0) << out2;
  EXPECT_THAT(out2, ::testing::HasSubstr("lr: 0.01"));
  for (const char* cmd : {"eval", "sample", "prepare-data", "tokenizer", "plot", "info"}) {
    auto [rc3, out3] = run_kiln(std::string(cmd) + " --help");
    EXPECT_EQ(rc3, 0) << cmd << ": " << out3;
    EXPECT_THAT(out3, ::testing::HasSubstr("usage")) << cmd;
  }
}

}  // namespace
}  // namespace kiln::launch
