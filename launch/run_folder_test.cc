// The run folder through the CLI: `kiln eval`, `sample`, `logits` and `export` only read it (no
// byte of it changes, nothing is created; a checkpoint alone is enough), `--init-from` beside a
// checkpoint is never silently ignored, and `train --resume never` refuses to start over an
// earlier run unless told to with --overwrite.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "launch/testing/files.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

std::string fresh_dir(const std::string& name) {
  return kiln::testing::fresh_dir("run_folder_" + name);
}
using kiln::testing::read_bytes;
using kiln::testing::run_kiln;

// Every file under `dir` (relative path -> contents).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out[fs::relative(e.path(), dir).string()] = e.is_regular_file() ? read_bytes(e.path()) : "/";
  return out;
}

// The files that differ between two snapshots ("" when none), for a short failure message.
std::string changes(const std::map<std::string, std::string>& a,
                    const std::map<std::string, std::string>& b) {
  std::string out;
  for (const auto& [k, v] : a)
    if (!b.count(k))
      out += " removed " + k;
    else if (b.at(k) != v)
      out += " changed " + k;
  for (const auto& [k, v] : b)
    if (!a.count(k)) out += " created " + k;
  return out;
}

// A tiny run with every output on: metrics.jsonl, TensorBoard, checkpoints every 2 steps.
const char* kConfig = R"pb(
  model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
  data { synthetic: true seq_len: 16 }
  training { global_batch_size: 8 max_steps: 4 }
  eval { batches: 2 sample_tokens: 4 }
  checkpoint { every_n_steps: 2 keep_last: 2 }
  logging { tensorboard: true jsonl: true }
  device: CPU
)pb";

// Writes the config and trains it into DIR/run; returns the arguments that name both.
std::string train_run(const std::string& dir) {
  std::ofstream(dir + "/cfg.textproto") << kConfig;
  const std::string args =
      "--config " + dir + "/cfg.textproto --set logging.run_dir=" + dir + "/run";
  auto [rc, out] = run_kiln("train " + args);
  EXPECT_EQ(rc, 0) << out;
  return args;
}

// The "train" records of RUN/metrics.jsonl, one line each.
std::vector<std::string> train_rows(const std::string& run) {
  std::ifstream in(run + "/metrics.jsonl");
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);)
    if (line.find("\"kind\":\"train\"") != std::string::npos) rows.push_back(line);
  return rows;
}

double val_loss(const std::string& out) {
  const size_t p = out.find("val loss ");
  return p == std::string::npos ? -1 : std::stod(out.substr(p + 9));
}

TEST(RunFolder, ReadingCommandsNeverWriteIntoIt) {
  const std::string dir = fresh_dir("readonly");
  const std::string args = train_run(dir);
  const std::string run = dir + "/run", ckpt = run + "/checkpoints";
  const auto before = snapshot(run);
  ASSERT_FALSE(read_bytes(run + "/metrics.jsonl").empty());
  const std::vector<std::string> commands = {
      "eval " + args,
      "sample " + args,
      "eval --checkpoint " + ckpt,  // no --config: the checkpoint's own
      "sample --checkpoint " + ckpt + "/step_00000002 --set eval.sample_tokens=3",
      "logits --checkpoint " + ckpt + " --tokens '1 2 3'",
      "export --checkpoint " + ckpt + " --out " + dir + "/export",
  };
  for (const std::string& c : commands) {
    auto [rc, out] = run_kiln(c);
    EXPECT_EQ(rc, 0) << c << ":\n" << out;
    EXPECT_EQ(changes(before, snapshot(run)), "") << c;
  }
  // The checkpoint's config is what --checkpoint evaluates with: the same loss as --config.
  auto [rc1, by_config] = run_kiln("eval " + args);
  auto [rc2, by_ckpt] = run_kiln("eval --checkpoint " + ckpt);
  EXPECT_EQ(val_loss(by_config), val_loss(by_ckpt)) << by_config << by_ckpt;
  EXPECT_GT(val_loss(by_ckpt), 0);
}

TEST(RunFolder, InitFromBesideACheckpointIsNeverSilent) {
  const std::string dir = fresh_dir("init_from");
  const std::string args = train_run(dir);
  const std::string ckpt = dir + "/run/checkpoints";
  auto [rc0, out0] = run_kiln("export --checkpoint " + ckpt + " --out " + dir + "/step4");
  ASSERT_EQ(rc0, 0) << out0;
  // train: the run folder's checkpoint wins (a requeued job resumes), and says so.
  auto [rc1, out1] =
      run_kiln("train " + args + " --set training.max_steps=6 --init-from " + dir + "/step4");
  ASSERT_EQ(rc1, 0) << out1;
  EXPECT_THAT(out1, HasSubstr("training.init_from " + dir + "/step4 is not used"));
  EXPECT_THAT(out1, HasSubstr("resumed from"));
  EXPECT_THAT(out1, HasSubstr("kiln: trained steps 5-6 (resumed at step 4;"));
  // eval: the weights asked for are the ones evaluated (step 4's, not the latest step 6's).
  auto [rc2, init] = run_kiln("eval " + args + " --init-from " + dir + "/step4");
  auto [rc3, step4] = run_kiln("eval --checkpoint " + ckpt + "/step_00000004");
  auto [rc4, latest] = run_kiln("eval " + args);
  ASSERT_EQ(rc2 + rc3 + rc4, 0) << init << step4 << latest;
  EXPECT_THAT(init, HasSubstr("weights: " + dir + "/step4 (--init-from)"));
  EXPECT_EQ(val_loss(init), val_loss(step4)) << init << step4;
  EXPECT_NE(val_loss(init), val_loss(latest)) << init << latest;
}

// A finished run started again trains nothing and says so (not "trained 4 steps").
TEST(RunFolder, FinishedRunStartedAgainSaysNothingToTrain) {
  const std::string dir = fresh_dir("finished");
  const std::string args = train_run(dir);
  ASSERT_EQ(train_rows(dir + "/run").size(), 4u);
  auto [rc, out] = run_kiln("train " + args);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("kiln: nothing to train: the checkpoint is at step 4"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("kiln: trained"))) << out;
  EXPECT_EQ(train_rows(dir + "/run").size(), 4u)
      << "train rows added by a run with nothing to train";
}

TEST(RunFolder, MetricsStepsMatchTheConsole) {
  const std::string dir = fresh_dir("steps");
  std::ofstream(dir + "/cfg.textproto") << kConfig;
  auto [rc, out] =
      run_kiln("train --config " + dir + "/cfg.textproto --set logging.run_dir=" + dir + "/run");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("step     1/4 | loss"));
  const std::vector<std::string> train = train_rows(dir + "/run");
  ASSERT_EQ(train.size(), 4u);
  EXPECT_THAT(train.front(), HasSubstr("\"step\":1,"));  // the console's "step 1/4"
  EXPECT_THAT(train.back(), HasSubstr("\"step\":4,"));
}

TEST(RunFolder, ResumeNeverRefusesAnEarlierRunUnlessOverwrite) {
  const std::string dir = fresh_dir("never");
  const std::string args = train_run(dir);
  const std::string run = dir + "/run";
  const auto before = snapshot(run);
  auto [rc, out] = run_kiln("train " + args + " --resume never --set training.max_steps=2");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr(run + " holds an earlier run"));
  EXPECT_THAT(out, HasSubstr("--overwrite"));
  EXPECT_THAT(out, Not(HasSubstr("step    1/")));
  EXPECT_EQ(changes(before, snapshot(run)), "") << "the refused run changed the folder";
  // --overwrite: the old run's checkpoints and metrics go, the new run's stay.
  auto [rc2, out2] =
      run_kiln("train " + args + " --resume never --overwrite --set training.max_steps=2");
  ASSERT_EQ(rc2, 0) << out2;
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step_00000002"));
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step_00000004")) << "the old run's checkpoint";
  EXPECT_THAT(read_bytes(run + "/checkpoints/latest"), HasSubstr("step_00000002"));
  EXPECT_THAT(read_bytes(run + "/metrics.jsonl"), Not(HasSubstr("\"step\":4,")));
}

}  // namespace
}  // namespace kiln::launch
