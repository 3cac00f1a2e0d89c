// Checkpoint tests: CRC32C, manifest framing and validation, resharding reads from a hand-written
// multi-rank checkpoint, retention and resume discovery, bit-identical in-process resume (dropout,
// fp16 loss scaler), and corrupt checkpoints rejected at `kiln train` startup with a message
// naming the tensor or file (never a crash). Process-level kill tests:
// tests/checkpoint_process_test.py.
#include "launch/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_format.h"
#include "core/check.h"
#include "launch/checkpoint_manifest.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "launch/testing/tiny_config.h"
#include "launch/trainer.h"

namespace kiln::launch {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/kiln_ckpt_" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(Crc32c, MatchesTheTableVersionAndExtends) {
  std::mt19937 rng(5);
  std::string data(1 << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {0, 1, 7, 8, 9, 63, 64, 1000, 1 << 20})
    EXPECT_EQ(crc32c_update(0, data.data(), n), crc32c(data.data(), n)) << n;
  const uint32_t whole = crc32c_update(0, data.data(), data.size());
  uint32_t parts = crc32c_update(0, data.data(), 12345);
  parts = crc32c_update(parts, data.data() + 12345, data.size() - 12345);
  EXPECT_EQ(parts, whole);
  EXPECT_EQ(crc32c_update(0, "123456789", 9), 0xE3069283u);  // the standard check value
}

TEST(StepDirName, RoundTrips) {
  EXPECT_EQ(step_dir_name(100), "step_00000100");
  EXPECT_EQ(parse_step_dir_name("step_00000100"), 100);
  EXPECT_EQ(parse_step_dir_name("step_123456789"), 123456789);
  for (const char* bad : {"step_1", ".tmp_step_00000100", "step_0000010x", "latest", ""})
    EXPECT_EQ(parse_step_dir_name(bad), -1) << bad;
}

// A valid manifest: "w" (5, 7) in three pieces over three ranks, "b" (4) whole on rank 0.
Manifest small_manifest() {
  Manifest m;
  m.set_format_version(kManifestFormatVersion);
  m.set_checksum_algorithm(kChecksumAlgorithm);
  m.set_step(7);
  m.set_tokens_seen(700);
  auto* l = m.mutable_layout();
  l->set_world_size(3);
  l->set_dp(3);
  l->set_tp(1);
  l->set_pp(1);
  l->set_zero_stage(1);
  for (int r = 0; r < 3; ++r) m.add_files(absl::StrFormat("rank_%05d.bin", r));
  auto add = [&](const std::string& name, Shape shape, int64_t off, int64_t len, int rank,
                 int64_t file_off) {
    TensorEntry* e = m.add_tensors();
    e->set_name(name);
    for (int64_t d : shape) e->add_shape(d);
    e->set_dtype(F32);
    e->set_shard_offset(off);
    e->set_shard_length(len);
    e->set_file(absl::StrFormat("rank_%05d.bin", rank));
    e->set_file_offset(file_off);
    e->set_rank(rank);
  };
  add("w", {5, 7}, 0, 10, 0, 0);
  add("b", {4}, 0, 4, 0, 40);
  add("w", {5, 7}, 10, 20, 1, 0);
  add("w", {5, 7}, 30, 5, 2, 0);
  return m;
}

TEST(Manifest, EncodesDecodesAndRejectsDamagedFrames) {
  const Manifest m = small_manifest();
  ASSERT_TRUE(validate_manifest(m).ok()) << validate_manifest(m).message();
  const std::string bytes = encode_manifest(m);
  absl::StatusOr<Manifest> back = decode_manifest(bytes, "M");
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->SerializeAsString(), m.SerializeAsString());
  auto fails_with = [](const std::string& b, const std::string& what) {
    absl::StatusOr<Manifest> r = decode_manifest(b, "the/manifest.bin");
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("the/manifest.bin")) << what;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(what));
  };
  fails_with(bytes.substr(0, 10), "truncated");
  fails_with(bytes.substr(0, bytes.size() - 3), "truncated or appended");
  fails_with("XXXXXXXX" + bytes.substr(8), "bad magic");
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  fails_with(flipped, "checksum mismatch");
}

TEST(Manifest, ValidationNamesTheProblem) {
  struct Case {
    std::function<void(Manifest*)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {[](Manifest* m) { m->set_format_version(2); }, "format_version 2"},
      {[](Manifest* m) { m->mutable_tensors(2)->set_shard_length(19); }, "tensor 'w': gap"},
      {[](Manifest* m) { m->mutable_tensors(3)->set_shard_offset(29); }, "tensor 'w': overlap"},
      {[](Manifest* m) { m->mutable_tensors(1)->set_shard_length(5); }, "tensor 'b'"},
      {[](Manifest* m) { m->mutable_tensors(1)->set_shape(0, -4); }, "bad shape"},
      {[](Manifest* m) { m->mutable_tensors(2)->set_rank(3); }, "rank 3 outside"},
      {[](Manifest* m) { m->set_files(1, "../rank_00001.bin"); }, "not a plain file name"},
      {[](Manifest* m) { m->mutable_tensors(0)->set_file("other.bin"); }, "not in the manifest"},
      {[](Manifest* m) { m->mutable_tensors(3)->add_shape(1); }, "pieces disagree on the shape"},
      {[](Manifest* m) { m->mutable_layout()->set_dp(2); }, "!= world_size"},
      {[](Manifest* m) { m->mutable_tensors(0)->set_dtype(BF16); }, "only F32"},
  };
  for (const Case& c : cases) {
    Manifest m = small_manifest();
    c.edit(&m);
    absl::Status s = validate_manifest(m);
    EXPECT_FALSE(s.ok()) << c.expect;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expect));
  }
}

// Writes small_manifest()'s checkpoint to `dir`: w = 0..34, b = 100..103.
void write_small_checkpoint(const std::string& dir) {
  Manifest m = small_manifest();
  std::vector<std::string> files(3);
  for (TensorEntry& e : *m.mutable_tensors()) {
    std::vector<float> v(e.shard_length());
    for (int64_t i = 0; i < e.shard_length(); ++i)
      v[i] = static_cast<float>((e.name() == "b" ? 100 : 0) + e.shard_offset() + i);
    const std::string bytes(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    e.set_checksum(crc32c_update(0, bytes.data(), bytes.size()));
    files[e.rank()] += bytes;
  }
  for (int r = 0; r < 3; ++r) write_bytes(dir + "/" + m.files(r), files[r]);
  write_bytes(dir + "/manifest.bin", encode_manifest(m));
}

TEST(Reshard, AnyPieceSplitReadsBackTheSameValues) {
  const std::string dir = fresh_dir("reshard");
  write_small_checkpoint(dir);
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(dir);
  ASSERT_TRUE(m.ok()) << m.status().message();
  // One rank (whole), two ranks (split mid-piece), four ranks (ZeRO-style, last one short).
  for (const std::vector<int64_t>& cuts : std::vector<std::vector<int64_t>>{
           {0, 35}, {0, 18, 35}, {0, 9, 18, 27, 35}, {0, 10, 30, 35}, {3, 4}}) {
    std::vector<parallel::Piece> want;
    for (size_t i = 0; i + 1 < cuts.size(); ++i)
      want.push_back({"w", {5, 7}, cuts[i], Tensor::zeros({cuts[i + 1] - cuts[i]})});
    want.push_back({"b", {4}, 0, Tensor::zeros({4})});
    absl::Status s = read_checkpoint_pieces(dir, *m, want);
    ASSERT_TRUE(s.ok()) << s.message();
    for (const parallel::Piece& p : want) {
      const std::vector<double> v = p.local.to_vector();
      for (size_t i = 0; i < v.size(); ++i)
        EXPECT_EQ(v[i], (p.name == "b" ? 100 : 0) + p.offset + static_cast<double>(i)) << p.name;
    }
  }
  absl::StatusOr<Tensor> w = read_full_tensor(dir, *m, "w");
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->shape(), (Shape{5, 7}));
  EXPECT_EQ(w->to_vector()[34], 34.0);
  // Errors name the tensor and the file.
  std::vector<parallel::Piece> bad = {{"w", {7, 5}, 0, Tensor::zeros({35})}};
  EXPECT_THAT(std::string(read_checkpoint_pieces(dir, *m, bad).message()),
              HasSubstr("tensor 'w' has shape [5, 7] in the checkpoint but [7, 5] here"));
  bad = {{"nope", {4}, 0, Tensor::zeros({4})}};
  EXPECT_THAT(std::string(read_checkpoint_pieces(dir, *m, bad).message()),
              HasSubstr("has no tensor 'nope'"));
  std::string f1 = read_bytes(dir + "/rank_00001.bin");
  f1[13] ^= 0x01;
  write_bytes(dir + "/rank_00001.bin", f1);
  absl::Status s = read_checkpoint_pieces(dir, *m, {{"w", {5, 7}, 0, Tensor::zeros({35})}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("checksum mismatch in tensor 'w'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("rank_00001.bin"));
  // A piece whose stored range the wanted one does not touch is not read: rank 1's damage does
  // not matter to "b".
  EXPECT_TRUE(read_checkpoint_pieces(dir, *m, {{"b", {4}, 0, Tensor::zeros({4})}}).ok());
  EXPECT_FALSE(verify_checkpoint(dir, *m).ok());
}

TEST(Retention, KeepsLastKEveryMthAndLatest) {
  const std::string dir = fresh_dir("retention");
  for (int s = 1; s <= 9; ++s) fs::create_directories(dir + "/" + step_dir_name(s));
  fs::create_directories(dir + "/.tmp_step_00000010");
  write_bytes(dir + "/latest", "step_00000002\n");  // e.g. resumed from an older checkpoint
  apply_retention(dir, 3, 4);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"latest", "step_00000002", "step_00000004",
                                            "step_00000007", "step_00000008", "step_00000009"}));
}

TEST(FindResume, FollowsLatestAndSaysWhatIsWrong) {
  const std::string dir = fresh_dir("find");
  CheckpointConfig c;
  c.set_dir(dir + "/none");
  c.set_resume("auto");
  EXPECT_EQ(*find_resume_checkpoint(c), "");  // no directory yet: start fresh
  c.set_dir(dir);
  EXPECT_EQ(*find_resume_checkpoint(c), "");
  fs::create_directories(dir + "/step_00000004");
  fs::create_directories(dir + "/step_00000008");
  fs::create_directories(dir + "/.tmp_step_00000012");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000008");  // no pointer: newest complete
  write_bytes(dir + "/latest", "step_00000004\n");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000004");  // the commit point
  write_bytes(dir + "/latest", "step_00000006\n");
  EXPECT_THAT(std::string(find_resume_checkpoint(c).status().message()),
              HasSubstr("latest names step_00000006, which does not exist"));
  c.set_resume("never");
  EXPECT_EQ(*find_resume_checkpoint(c), "");
  c.set_resume(dir + "/step_00000008");
  EXPECT_EQ(*find_resume_checkpoint(c), dir + "/step_00000008");  // a directory: taken as given
}

// The shared tiny run (launch/testing/tiny_config.h) with dropout and samples, checkpointing every
// 5 of 12 steps and at the end, resuming as the config says; `extra` (textproto) is merged last.
TrainConfig tiny(const std::string& run_dir, const std::string& extra = "") {
  return testing::tiny_config(
      run_dir, R"pb(
                     model { dropout: 0.1 }
                     training { max_steps: 12 seed: 9 }
                     checkpoint { every_n_steps: 5 keep_last: 0 resume: "auto" save_at_end: true }
                     eval { batches: 1 sample_tokens: 3 sample_every: 4 }
                   )pb" +
                   extra);
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

// Resumes run A's step-5 checkpoint in run B and checks every later loss and the final state.
void expect_bit_identical_resume(const std::string& name, const std::string& extra) {
  const std::string a = fresh_dir(name + "_a"), b = fresh_dir(name + "_b");
  TrainSummary ra = train(tiny(a, extra));
  ASSERT_EQ(ra.train_losses.size(), 12u);
  EXPECT_EQ(ra.checkpoint, a + "/checkpoints/step_00000012");
  TrainConfig cb = tiny(b, extra);
  cb.mutable_checkpoint()->set_resume(a + "/checkpoints/step_00000005");
  TrainSummary rb = train(cb);
  ASSERT_EQ(rb.first_step, 5);
  ASSERT_EQ(rb.train_losses.size(), 7u);
  for (size_t i = 0; i < 7; ++i)
    EXPECT_EQ(std::memcmp(&rb.train_losses[i], &ra.train_losses[i + 5], sizeof(double)), 0)
        << "step " << i + 5 << ": " << rb.train_losses[i] << " vs " << ra.train_losses[i + 5];
  EXPECT_EQ(rb.sample, ra.sample);
  EXPECT_EQ(read_bytes(a + "/checkpoints/step_00000012/rank_00000.bin"),
            read_bytes(b + "/checkpoints/step_00000012/rank_00000.bin"));
  absl::StatusOr<Manifest> ma = read_checkpoint_manifest(a + "/checkpoints/step_00000012");
  absl::StatusOr<Manifest> mb = read_checkpoint_manifest(b + "/checkpoints/step_00000012");
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_EQ(ma->schedule().SerializeAsString(), mb->schedule().SerializeAsString());
  EXPECT_EQ(ma->optimizer_steps(), mb->optimizer_steps());
  for (int i = 0; i < ma->rng_size(); ++i) EXPECT_EQ(ma->rng(i).state(), mb->rng(i).state());
}

TEST(Resume, BitIdenticalWithDropoutAndSamples) { expect_bit_identical_resume("resume", ""); }

TEST(Resume, BitIdenticalWithTheFp16LossScaler) {
  // Starts at a scale that overflows, so steps are skipped and the scale moves both ways.
  expect_bit_identical_resume(
      "fp16", "precision { dtype: FP16 loss_scale_init: 1048576 loss_scale_growth_interval: 2 }");
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(
      ::testing::TempDir() + "/kiln_ckpt_fp16_a/checkpoints/step_00000005");
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_GT(m->schedule().skipped_steps(), 0);
  EXPECT_LT(m->optimizer_steps(), 5);
  EXPECT_LT(m->schedule().loss_scale(), 1048576);
}

// ---- corrupt checkpoints, through the CLI: an error at startup naming the tensor or file ----

std::pair<int, std::string> run_kiln(const std::string& args) {
  const std::string cmd = std::string(KILN_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  const int st = pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), out};
}

const char* kCliConfig = R"pb(
  model { preset: "gpt2-tiny" vocab_size: 96 max_seq_len: 32 n_layer: 2 n_head: 2 d_model: 32 }
  data { synthetic: true seq_len: 16 }
  training { global_batch_size: 8 max_steps: 4 }
  eval { batches: 1 sample_tokens: 0 }
  logging { tensorboard: false }
  device: CPU
)pb";

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
  struct Case {
    std::string name;
    std::function<void(const std::string&)> damage;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"flipped_bit",
       [&](const std::string& d) {
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
       [&](const std::string& d) {
         fs::copy_file(dir + "/other/checkpoints/step_00000004/manifest.bin", d + "/manifest.bin",
                       fs::copy_options::overwrite_existing);
       },
       {"does not fit this model", "tensor 'wte.weight' is [96, 48] there but [96, 32]",
        "model.d_model: 48 in the checkpoint, 32 here"}},
      {"other_checkpoint",
       [&](const std::string& d) {
         fs::remove_all(d);
         fs::copy(dir + "/other/checkpoints/step_00000004", d, fs::copy_options::recursive);
       },
       {"does not fit this model", "model.d_model: 48 in the checkpoint, 32 here"}},
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

}  // namespace
}  // namespace kiln::launch
