// The non-finite guard in process (issue 15): a step with a NaN loss or gradients is not applied
// (weights and optimizer state byte-identical to the last applied step), N in a row stop the run,
// fp16 overflow skips are logged, a non-finite state is never saved, `checkpoint verify` names
// non-finite tensors, and --init-from weights holding NaN are refused naming the tensor; the run
// folder's lock refuses a second holder. The same with real processes and under mpirun:
// tests/safety_process_test.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/hf_mapping.h"
#include "launch/run_lock.h"
#include "launch/safetensors.h"
#include "launch/testing/files.h"
#include "launch/testing/tiny_config.h"
#include "launch/trainer.h"

namespace kiln::launch {
namespace {

using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  return kiln::testing::fresh_dir("safety_" + name);
}
using kiln::testing::read_bytes;

// Sets KILN_INJECT_NON_FINITE for one scope.
class Inject {
 public:
  explicit Inject(const std::string& spec) { setenv("KILN_INJECT_NON_FINITE", spec.c_str(), 1); }
  ~Inject() { unsetenv("KILN_INJECT_NON_FINITE"); }
};

// 8 steps, a checkpoint after every step (all kept), metrics.jsonl on.
TrainConfig guarded(const std::string& dir, const std::string& extra = "") {
  return testing::tiny_config(dir, R"pb(
                                         training { max_steps: 8 max_non_finite_steps: 3 }
                                         checkpoint { every_n_steps: 1 keep_last: 0 }
                                         logging { jsonl: true }
                                       )pb" +
                                       extra);
}

absl::StatusOr<TrainSummary> train(const TrainConfig& cfg) {
  Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  if (!s.ok()) return s;
  return t.run();
}

std::string shard(const std::string& dir, int step) {
  return read_bytes(absl::StrFormat("%s/checkpoints/step_%08d/rank_00000.bin", dir, step));
}

TEST(NonFiniteGuard, SkippedStepsLeaveWeightsAndOptimizerStateUntouched) {
  const std::string dir = fresh_dir("skip");
  absl::StatusOr<TrainSummary> r;
  {
    Inject nan("0:2-3:grad");  // steps 3 and 4 (0-based 2 and 3) get NaN gradients
    r = train(guarded(dir));
  }
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->skipped_steps, 2);
  EXPECT_FALSE(r->non_finite_stop);
  EXPECT_EQ(r->steps, 8);
  // Checkpoints after steps 2, 3 and 4 hold the same weights and optimizer state, byte for byte.
  const std::string after2 = shard(dir, 2);
  ASSERT_FALSE(after2.empty());
  EXPECT_EQ(shard(dir, 3), after2);
  EXPECT_EQ(shard(dir, 4), after2);
  EXPECT_NE(shard(dir, 5), after2);  // training goes on
  absl::StatusOr<Manifest> m2 = read_checkpoint_manifest(dir + "/checkpoints/step_00000002");
  absl::StatusOr<Manifest> m4 = read_checkpoint_manifest(dir + "/checkpoints/step_00000004");
  ASSERT_TRUE(m2.ok() && m4.ok());
  EXPECT_EQ(m4->optimizer_steps(), m2->optimizer_steps());  // AdamW's step count too
  for (double l : r->train_losses) EXPECT_TRUE(std::isfinite(l));
  // Both skips are in metrics.jsonl.
  const std::string jsonl = read_bytes(dir + "/metrics.jsonl");
  EXPECT_THAT(jsonl, HasSubstr("{\"kind\":\"skip\",\"step\":2,\"non_finite\":1,\"overflow\":0"));
  EXPECT_THAT(jsonl, HasSubstr("{\"kind\":\"skip\",\"step\":3,\"non_finite\":1,\"overflow\":0"));
}

TEST(NonFiniteGuard, StopsAfterMaxNonFiniteStepsInARowWithoutSaving) {
  const std::string dir = fresh_dir("stop");
  absl::StatusOr<TrainSummary> r;
  ::testing::internal::CaptureStderr();
  {
    Inject nan("0:1-100:loss");
    r = train(guarded(dir));
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->non_finite_stop);
  EXPECT_EQ(r->steps, 4);  // step 1 applied, 2-4 not: 3 in a row
  EXPECT_THAT(err, HasSubstr("step 2: loss nan"));
  EXPECT_THAT(err, HasSubstr("stopping after step 4: 3 steps in a row had a non-finite loss"));
  // Steps 2 and 3 were saved (their state is step 1's); step 4, where the run stopped, was not.
  EXPECT_TRUE(std::filesystem::exists(dir + "/checkpoints/step_00000003"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/checkpoints/step_00000004"));
  EXPECT_EQ(shard(dir, 3), shard(dir, 1));
}

TEST(NonFiniteGuard, Fp16OverflowSkipsAreLogged) {
  const std::string dir = fresh_dir("fp16");
  ::testing::internal::CaptureStderr();
  absl::StatusOr<TrainSummary> r = train(
      guarded(dir, "precision { dtype: FP16 loss_scale_init: 1e30 loss_scale_backoff: 0.001 }"));
  const std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->skipped_steps, 0);
  EXPECT_FALSE(r->non_finite_stop);  // overflow skips do not count toward the stop
  EXPECT_THAT(err, HasSubstr("fp16 gradient overflow: step skipped, loss scale now"));
  EXPECT_THAT(read_bytes(dir + "/metrics.jsonl"),
              HasSubstr("{\"kind\":\"skip\",\"step\":0,\"non_finite\":0,\"overflow\":1"));
}

TEST(NonFiniteGuard, ANonFiniteStateIsNeverSaved) {
  const std::string dir = fresh_dir("nosave");
  Trainer t(guarded(dir), parallel::World{});
  t.set_quiet(true);
  ASSERT_TRUE(t.init().ok());
  nn::Parameter p = t.model().parameters()[3];
  p.tensor.fill_(NAN);
  absl::StatusOr<std::string> s = t.save_checkpoint();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("tensor '" + p.name + "' holds NaN or Inf values"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/checkpoints/latest"));
}

TEST(NonFiniteGuard, VerifyNamesNonFiniteTensors) {
  const std::string dir = fresh_dir("verify");
  TrainConfig cfg = guarded(dir);
  cfg.mutable_training()->set_max_steps(1);
  ASSERT_TRUE(train(cfg).ok());
  const std::string ckpt = dir + "/checkpoints/step_00000001";
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(ckpt);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(verify_checkpoint(ckpt, *m).ok());
  // An Inf in the second stored tensor, with a matching checksum: only the value check sees it.
  TensorEntry* e = m->mutable_tensors(1);
  std::string bin = read_bytes(ckpt + "/" + e->file());
  const float inf = INFINITY;
  std::memcpy(bin.data() + e->file_offset() + 4, &inf, 4);
  e->set_checksum(crc32c_update(0, bin.data() + e->file_offset(), e->shard_length() * 4));
  std::ofstream(ckpt + "/" + e->file(), std::ios::binary) << bin;
  std::ofstream(ckpt + "/manifest.bin", std::ios::binary) << encode_manifest(*m);
  absl::Status s = verify_checkpoint(ckpt, *m);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("1 tensor(s) hold NaN or Inf values: " + e->name() + " (1)"));
}

TEST(NonFiniteGuard, InitFromWeightsWithNaNAreRefusedNamingTheTensor) {
  const std::string dir = fresh_dir("init");
  TrainConfig cfg = guarded(dir);
  std::vector<HfTensor> ts = hf_tensors(cfg.model());
  std::vector<std::string> data;
  std::vector<SafetensorsTensor> specs;
  for (const HfTensor& t : ts) {
    int64_t n = 1;
    for (int64_t d : t.hf_shape) n *= d;
    data.emplace_back(n * 4, '\0');
    specs.push_back({t.hf_name, "F32", t.hf_shape, {}});
  }
  const float nan = NAN;
  std::memcpy(data[2].data() + 8, &nan, 4);
  for (size_t i = 0; i < specs.size(); ++i) specs[i].data = data[i];
  ASSERT_TRUE(write_safetensors(dir + "/w.safetensors", specs, {}).ok());
  cfg.mutable_training()->set_init_from(dir + "/w.safetensors");
  Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor '" + ts[2].hf_name + "' holds NaN"));
}

// flock locks belong to an open file description, so a second acquire in this same process
// conflicts just as another process's would; closing the holder frees the folder.
TEST(RunLock, SecondHolderIsRefusedNamingTheFirstAndTheLockIsFreedWithIt) {
  const std::string dir = fresh_dir("lock");
  absl::StatusOr<RunLock> first = RunLock::acquire(dir);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<RunLock> second = RunLock::acquire(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr("is in use by another kiln train (pid " + std::to_string(getpid())));
  { RunLock gone = std::move(*first); }
  EXPECT_TRUE(RunLock::acquire(dir).ok());
}

}  // namespace
}  // namespace kiln::launch
