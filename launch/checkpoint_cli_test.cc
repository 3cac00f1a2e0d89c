// Corrupt checkpoints through the CLI: each damage (a flipped bit, a truncated or missing shard,
// wrong shapes, another model's manifest or checkpoint, an fp8 history naming no layer, a damaged
// or missing manifest) is an error at `kiln train` startup naming the tensor or file, never a crash
// and never a started run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/testing/files.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  return kiln::testing::fresh_dir("ckpt_cli_" + name);
}
using kiln::testing::read_bytes;
using kiln::testing::run_kiln;
using kiln::testing::write_bytes;

// ---- corrupt checkpoints, through the CLI: an error at startup naming the tensor or file ----

const char* kCliConfig = R"pb(
  model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
  data { synthetic: true seq_len: 16 }
  training { global_batch_size: 8 max_steps: 4 }
  eval { batches: 1 sample_tokens: 0 }
  logging { tensorboard: false }
  device: CPU
)pb";

struct Case {
  std::string name;
  std::function<void(const std::string&)> damage;
  std::vector<std::string> expect;
};

// Adds an fp8 delayed-scaling history of rank 0 named `name` to d's manifest.
void add_fp8_history(const std::string& d, const std::string& name) {
  Manifest w = *read_checkpoint_manifest(d);
  Fp8HistoryState* f = w.add_fp8();
  f->set_name(name);
  for (int i = 0; i < 3; ++i) f->add_slots(1.0f);
  f->set_uses(1);
  write_bytes(d + "/manifest.bin", encode_manifest(w));
}

// The damages, each with the phrases its error must contain. `dir` holds the good run and
// "other" (d_model 48); `victim` is a tensor in the middle of rank 0's shard file.
std::vector<Case> corrupt_cases(const std::string& dir, const TensorEntry& victim) {
  return {
      {"flipped_bit",
       [dir, victim](const std::string& d) {
         std::string b = read_bytes(d + "/rank_00000.bin");
         b[victim.file_offset() + 5] ^= 0x04;
         write_bytes(d + "/rank_00000.bin", b);
       },
       {"checksum mismatch in tensor '" + victim.name() + "'", "rank_00000.bin"}},
      {"truncated",
       [](const std::string& d) {
         fs::resize_file(d + "/rank_00000.bin", fs::file_size(d + "/rank_00000.bin") - 100);
       },
       {"shard file rank_00000.bin is truncated"}},
      {"missing_shard",
       [](const std::string& d) { fs::remove(d + "/rank_00000.bin"); },
       {"shard file rank_00000.bin is missing"}},
      {"wrong_shape",
       [](const std::string& d) {
         Manifest w = *read_checkpoint_manifest(d);
         for (TensorEntry& e : *w.mutable_tensors())
           if (e.name() == "h.1.mlp.c_fc.weight") {
             e.set_shape(0, 32);
             e.set_shape(1, 128);
           }
         write_bytes(d + "/manifest.bin", encode_manifest(w));
       },
       {"tensor 'h.1.mlp.c_fc.weight' is [32, 128] there but [128, 32] in this model"}},
      {"other_model",
       [dir, victim](const std::string& d) {
         fs::copy_file(dir + "/other/checkpoints/step_00000004/manifest.bin", d + "/manifest.bin",
                       fs::copy_options::overwrite_existing);
       },
       {"does not fit this model", "tensor 'wte.weight' is [96, 48] there but [96, 32]",
        "model.d_model: 48 in the checkpoint, 32 here"}},
      {"other_checkpoint",
       [dir, victim](const std::string& d) {
         fs::remove_all(d);
         fs::copy(dir + "/other/checkpoints/step_00000004", d, fs::copy_options::recursive);
       },
       {"does not fit this model", "model.d_model: 48 in the checkpoint, 32 here"}},
      {"fp8_history_other_chunk",
       [](const std::string& d) { add_fp8_history(d, "7/h.0.mlp.c_fc/x"); },
       {"fp8 history '7/h.0.mlp.c_fc/x' names no model chunk of this run (1 chunks)"}},
      {"fp8_history_unknown_layer",
       [](const std::string& d) { add_fp8_history(d, "0/h.9.mlp.c_fc/x"); },
       {"fp8 history 'h.9.mlp.c_fc/x': no Linear layer 'h.9.mlp.c_fc' in this model"}},
      {"flipped_manifest_bit",
       [](const std::string& d) {
         std::string b = read_bytes(d + "/manifest.bin");
         b[b.size() / 2] ^= 0x01;
         write_bytes(d + "/manifest.bin", b);
       },
       {"manifest.bin: checksum mismatch"}},
      {"missing_manifest",
       [](const std::string& d) { fs::remove(d + "/manifest.bin"); },
       {"manifest.bin is missing"}},
      {"garbage_manifest",
       [](const std::string& d) { write_bytes(d + "/manifest.bin", "{}"); },
       {"manifest.bin: truncated"}},
  };
}

TEST(CorruptCheckpoint, EachIsAClearErrorAtStartup) {
  const std::string dir = fresh_dir("corrupt");
  const std::string cfg = dir + "/cfg.textproto";
  write_bytes(cfg, kCliConfig);
  auto [rc0, out0] = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir + "/good");
  ASSERT_EQ(rc0, 0) << out0;
  auto [rc1, out1] = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir +
                              "/other --set model.d_model=48");
  ASSERT_EQ(rc1, 0) << out1;
  const std::string good = dir + "/good/checkpoints/step_00000004";
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(good);
  ASSERT_TRUE(m.ok());
  const TensorEntry& victim = m->tensors(5);  // some tensor in the middle of the shard file
  const std::vector<Case> cases = corrupt_cases(dir, victim);
  for (const Case& c : cases) {
    const std::string copy = dir + "/" + c.name + "/step_00000004";
    fs::create_directories(copy);
    fs::copy(good, copy, fs::copy_options::recursive);
    c.damage(copy);
    auto [rc, out] = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir + "/run_" +
                              c.name + " --resume=" + copy);
    EXPECT_EQ(rc, 1) << c.name << ":\n" << out;  // an error exit, not a crash (128 + signal)
    for (const std::string& e : c.expect) EXPECT_THAT(out, HasSubstr(e)) << c.name;
    EXPECT_THAT(out, ::testing::Not(HasSubstr("step "))) << c.name << ": training started";
    std::printf("%-20s -> %s", c.name.c_str(), out.substr(out.find("kiln train:")).c_str());
  }
  // `latest` naming a checkpoint that is gone, under resume "auto".
  fs::remove_all(dir + "/good/checkpoints/step_00000004");
  auto [rc, out] = run_kiln("train --config " + cfg + " --set logging.run_dir=" + dir + "/good");
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("latest names step_00000004, which does not exist"));
}

// A missing or empty checkpoint path given on the command line: an error naming the flag (or the
// path alone, for `kiln checkpoint`), not the config field checkpoint.resume the user never set.
TEST(CheckpointPathArg, MissingOrEmptyNamesTheFlag) {
  const std::string dir = fresh_dir("path_arg");
  const std::string gone = dir + "/gone";
  const struct {
    std::string args, expect;
  } cases[] = {
      {"checkpoint info " + gone, "kiln checkpoint: '" + gone + "' does not exist"},
      {"export --checkpoint " + gone + " --out " + dir + "/hf",
       "kiln export: --checkpoint: '" + gone + "' does not exist"},
      {"eval --checkpoint " + dir, "--checkpoint: no checkpoint in '" + dir + "'"},
      {"logits --checkpoint " + gone + " --tokens 1",
       "--checkpoint: '" + gone + "' does not exist"},
  };
  for (const auto& c : cases) {
    auto [rc, out] = run_kiln(c.args);
    EXPECT_EQ(rc, 1) << c.args << ":\n" << out;
    EXPECT_THAT(out, HasSubstr(c.expect)) << c.args;
    EXPECT_THAT(out, ::testing::Not(HasSubstr("checkpoint.resume"))) << c.args;
    EXPECT_THAT(out, ::testing::Not(HasSubstr("invalid config")))
        << c.args;  // a path, not a config
  }
  EXPECT_FALSE(fs::exists(dir + "/hf")) << "export wrote output for a missing checkpoint";
}

}  // namespace
}  // namespace kiln::launch
