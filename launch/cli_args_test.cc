// The kiln binary's command lines, run as a user would: `--help` on every command prints its usage
// and exits 0; a bad command line (a missing or malformed value, an unknown command or field) exits
// 2 (1 for a config that does not validate) with a message naming the flag or field, and starts
// nothing.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "launch/testing/files.h"

namespace kiln::launch {
namespace {

using kiln::testing::run_kiln;
using ::testing::HasSubstr;

TEST(CliArgs, HelpOnEveryCommand) {
  for (const char* cmd : {"train", "eval", "sample", "prepare-data", "tokenizer", "plot", "export",
                          "checkpoint", "logits", "plan", "info"}) {
    auto [rc, out] = run_kiln(std::string(cmd) + " --help");
    EXPECT_EQ(rc, 0) << cmd << ":\n" << out;
    EXPECT_THAT(out, HasSubstr(std::string("usage: kiln ") + cmd)) << out;
  }
  auto [rc, out] = run_kiln("--help");
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("usage: kiln COMMAND"));
}

TEST(CliArgs, BadCommandLinesNameTheFlag) {
  const std::string dir = kiln::testing::fresh_dir("cli_args");
  const std::string cfg = dir + "/cfg.textproto";
  kiln::testing::write_bytes(cfg, R"pb(
    model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 1 n_head: 2 d_model: 32 }
    data { synthetic: true seq_len: 16 }
    training { global_batch_size: 4 max_steps: 2 }
    device: CPU
  )pb");
  const struct {
    std::string args;
    int rc;
    std::string expect;
  } cases[] = {
      {"bogus", 2, "unknown command 'bogus'"},
      {"train", 2, "--config FILE is required"},
      {"train --config", 2, "--config needs a value"},
      {"train --config " + cfg + " --set training.bogus=1 --set logging.run_dir=" + dir + "/r", 1,
       "unknown field 'training.bogus'"},
      {"train --config " + cfg +
           " --set training.global_batch_size=abc --set logging.run_dir=" + dir + "/r",
       1, "training.global_batch_size: expected a 32-bit integer, got 'abc'"},
      {"plan --config " + cfg + " --gpu-mem abc", 2, "--gpu-mem: expected a GPU memory size"},
      {"plan --config " + cfg + " --gpu-mem 0", 2, "--gpu-mem: expected a GPU memory size"},
      {"plan --config " + cfg + " --world 2x", 2, "--world: expected a whole number of ranks"},
      {"plan --config " + cfg + " --world 0", 2, "--world must be >= 1"},
      {"checkpoint bogus " + dir, 2, "unknown command 'bogus': info, verify or hash"},
      {"checkpoint verify", 2, "kiln checkpoint verify: PATH is required"},
      {"export --checkpoint " + dir + " --out " + dir + "/hf --dtype fp16", 2, "--dtype fp16"},
      {"plot " + dir + " " + dir, 2, "one RUN_DIR, got 2 arguments"},
      {"sample --config " + cfg + " --bogus", 2, "unknown argument '--bogus'"},
      {"tokenizer bogus", 2, "unknown command 'bogus'"},
      {"prepare-data " + cfg, 2, "--out DIR is required"},
  };
  for (const auto& c : cases) {
    auto [rc, out] = run_kiln(c.args);
    EXPECT_EQ(rc, c.rc) << c.args << ":\n" << out;
    EXPECT_THAT(out, HasSubstr(c.expect)) << c.args;
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/r")) << "a bad command line started a run";
  EXPECT_FALSE(std::filesystem::exists(dir + "/hf")) << "a bad command line wrote an export";
}

}  // namespace
}  // namespace kiln::launch
