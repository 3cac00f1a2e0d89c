// The training loop on a GPU against the CPU reference: a tiny GPT-2 trained 50 steps on both
// (fixed synthetic data and seed) gives the same losses within bf16 tolerance (bf16 GPU run) and
// within f32 tolerance (f32 GPU run), and two GPU runs in deterministic mode are bit-identical,
// also across a checkpoint resume and with the fused parameter cast (KILN_FUSED_PARAM_CAST). Skips
// where no GPU is visible.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/cuda/runtime.h"
#include "core/nn/precast.h"
#include "core/testing/require_gpu.h"
#include "launch/checkpoint.h"
#include "launch/config.h"
#include "launch/testing/tiny_config.h"
#include "launch/trainer.h"

namespace kiln {
namespace {

constexpr int kSteps = 50;

// The shared tiny run (launch/testing/tiny_config.h), made 4x wider, with longer sequences and
// twice the batch, for 50 steps.
TrainConfig config(TrainConfig::Device device, PrecisionConfig::Dtype dtype, bool deterministic) {
  const std::string dtype_name = PrecisionConfig::Dtype_Name(dtype);
  return testing::tiny_config(
      ::testing::TempDir() + "/kiln_gpu_train",
      absl::StrCat(R"pb(
                     model { vocab_size: 512 max_seq_len: 64 n_head: 4 d_model: 128 }
                     data { seq_len: 64 }
                     training { global_batch_size: 16 max_steps: 50 seed: 11 }
                     parallel { micro_batch_size: 8 }
                     optimizer { lr: 3e-3 grad_clip: 1.0 }
                     schedule { lr { warmup_steps: 5 } }
                   )pb",
                   "device: ", TrainConfig::Device_Name(device), " precision { dtype: ", dtype_name,
                   " }", " training { deterministic: ", deterministic ? "true" : "false", " }"));
}

std::vector<double> train(const TrainConfig& cfg) {
  launch::Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  KILN_CHECK(s.ok()) << s.message();
  auto r = t.run();
  KILN_CHECK(r.ok()) << r.status().message();
  return r->train_losses;
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(a[i] - b[i]) / std::fabs(b[i]));
  return worst;
}

TEST(GpuTraining, MatchesCpuAndIsDeterministic) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  const std::vector<double> cpu = train(config(TrainConfig::CPU, PrecisionConfig::FP32, false));
  const std::vector<double> f32 = train(config(TrainConfig::CUDA, PrecisionConfig::FP32, true));
  const std::vector<double> bf16a = train(config(TrainConfig::CUDA, PrecisionConfig::BF16, true));
  const std::vector<double> bf16b = train(config(TrainConfig::CUDA, PrecisionConfig::BF16, true));
  ASSERT_EQ(cpu.size(), static_cast<size_t>(kSteps));
  const double d32 = max_rel_diff(f32, cpu), d16 = max_rel_diff(bf16a, cpu);
  std::printf(
      "50 steps: CPU f32 %.5f -> %.5f, GPU f32 max rel diff %.3g, GPU bf16 max rel diff %.3g\n",
      cpu.front(), cpu.back(), d32, d16);
  // f32 on the GPU differs from the CPU only in summation order (cuBLASLt, reductions): far below
  // 1e-3.
  EXPECT_LE(d32, 1e-3);
  // bf16 keeps 8 bits of mantissa (relative 2^-8 = 0.4% per rounding); over 50 steps the loss
  // curves stay within 2% of each other.
  EXPECT_LE(d16, 2e-2);
  EXPECT_LT(cpu.back(), cpu.front() - 0.5) << "the model did not learn";
  for (int i = 0; i < kSteps; ++i)
    EXPECT_EQ(std::memcmp(&bf16a[i], &bf16b[i], sizeof(double)), 0) << "step " << i;
}

// A run `a` of `base` saving every 20 steps into a fresh TempDir()/NAME_a, and a run `b` into
// NAME_b resuming from a's step-20 checkpoint.
struct ResumePair {
  TrainConfig a, b;
  std::string dir_a, dir_b;
};
ResumePair resume_pair(TrainConfig base, const std::string& name) {
  ResumePair r{std::move(base),
               {},
               ::testing::TempDir() + "/" + name + "_a",
               ::testing::TempDir() + "/" + name + "_b"};
  std::filesystem::remove_all(r.dir_a);
  std::filesystem::remove_all(r.dir_b);
  r.a.mutable_checkpoint()->set_every_n_steps(20);
  r.a.mutable_checkpoint()->set_keep_last(0);
  r.a.mutable_logging()->set_run_dir(r.dir_a);
  r.a.mutable_checkpoint()->set_dir(r.dir_a + "/checkpoints");
  r.b = r.a;
  r.b.mutable_logging()->set_run_dir(r.dir_b);
  r.b.mutable_checkpoint()->set_dir(r.dir_b + "/checkpoints");
  r.b.mutable_checkpoint()->set_resume(r.dir_a + "/checkpoints/step_00000020");
  return r;
}

// Every loss of the resumed run equals the uninterrupted run's from step 20 on, bit for bit.
void expect_same_from_step_20(const std::vector<double>& full, const std::vector<double>& resumed) {
  ASSERT_EQ(full.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(resumed.size(), static_cast<size_t>(kSteps - 20));
  for (int i = 20; i < kSteps; ++i)
    EXPECT_EQ(std::memcmp(&full[i], &resumed[i - 20], sizeof(double)), 0)
        << "step " << i << ": " << full[i] << " vs " << resumed[i - 20];
}

// Checkpoint resume on the GPU in deterministic mode: bf16 compute with dropout, saved at step 20
// (fp32 masters and moments copied from the device), restored into a fresh Trainer: every later
// loss bit-identical to the uninterrupted run, and the final checkpoints byte-identical.
TEST(GpuTraining, ResumeIsBitIdenticalInDeterministicMode) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  TrainConfig base = config(TrainConfig::CUDA, PrecisionConfig::BF16, true);
  base.mutable_model()->set_dropout(0.1);
  base.mutable_checkpoint()->set_save_at_end(true);
  const ResumePair r = resume_pair(base, "kiln_gpu_resume");
  const std::vector<double> full = train(r.a);  // first: b resumes from its checkpoint
  expect_same_from_step_20(full, train(r.b));
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const std::string last = "/checkpoints/step_00000050/rank_00000.bin";
  EXPECT_TRUE(bytes(r.dir_a + last) == bytes(r.dir_b + last)) << "final state differs";
}

// fp8 GEMMs with delayed scaling (the default) across a resume in deterministic mode: each
// linear's amax histories travel in the checkpoint (core/nn/fp8_histories.h), so the resumed run
// scales every fp8 tensor as the uninterrupted one did and its losses are bit-identical (without
// them its first step would scale by current amaxes). sm_89+ only.
TEST(GpuTraining, Fp8ResumeWithDelayedScalingIsBitIdentical) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  if (cuda::compute_capability() < 89) KILN_GPU_SKIP("fp8 GEMMs need sm_89+");
  TrainConfig base = config(TrainConfig::CUDA, PrecisionConfig::BF16, true);
  base.mutable_precision()->set_fp8_matmul(true);
  const ResumePair r = resume_pair(base, "kiln_gpu_fp8_resume");
  const std::vector<double> full = train(r.a);
  absl::StatusOr<Manifest> m =
      launch::read_checkpoint_manifest(r.dir_a + "/checkpoints/step_00000020", false);
  ASSERT_TRUE(m.ok()) << m.status().message();
  // 2 blocks x 4 linears x 3 roles (x, w, gy), each used every step.
  EXPECT_EQ(m->fp8_size(), 24) << "fp8 histories in the checkpoint";
  expect_same_from_step_20(full, train(r.b));
}

// One run of run_with_restore: the losses of every step, the
// final parameters on the CPU and the batched casts PrecastScope ran.
struct CastRun {
  std::vector<double> losses;
  std::vector<Tensor> params;
  int64_t casts = 0;
};

// KILN_FUSED_PARAM_CAST forced to `fused`: a 6-step run, then a restore of `checkpoint` (a step-3
// state of another run) into the same Trainer and its last 3 steps again.
CastRun run_with_restore(const TrainConfig& cfg, const std::string& checkpoint, bool fused) {
  nn::set_fused_param_cast_override(fused ? 1 : 0);
  const int64_t casts0 = nn::PrecastScope::casts();
  launch::Trainer t(cfg, parallel::World{});
  t.set_quiet(true);
  absl::Status s = t.init();
  KILN_CHECK(s.ok()) << s.message();
  CastRun out;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      s = t.restore_checkpoint(checkpoint);
      KILN_CHECK(s.ok()) << s.message();
    }
    auto r = t.run();
    KILN_CHECK(r.ok()) << r.status().message();
    out.losses.insert(out.losses.end(), r->train_losses.begin(), r->train_losses.end());
  }
  for (const nn::Parameter& p : t.data_parallel().optimizer().params())
    out.params.push_back(p.tensor.to(Device::cpu()));
  out.casts = nn::PrecastScope::casts() - casts0;
  nn::set_fused_param_cast_override(-1);
  return out;
}

// KILN_FUSED_PARAM_CAST: AdamW writes the parameters' 16-bit copies and the next step's
// PrecastScope uses them instead of casting. In deterministic mode the losses of a 6-step run, of
// 3 more steps after restoring a step-3 checkpoint into the same Trainer, and the final parameters
// are bit-identical to the run that casts every step; bf16 (one cast per run(): its first step)
// and fp16 (the loss scaler's skipped steps write no copies, so the step after one casts).
TEST(GpuTraining, FusedParamCastIsBitIdenticalAndSkipsTheCast) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  for (auto dtype : {PrecisionConfig::BF16, PrecisionConfig::FP16}) {
    SCOPED_TRACE(PrecisionConfig::Dtype_Name(dtype));
    TrainConfig cfg = config(TrainConfig::CUDA, dtype, true);
    cfg.mutable_training()->set_max_steps(6);
    cfg.mutable_checkpoint()->set_every_n_steps(0);  // the runs save nothing
    const std::string dir = ::testing::TempDir() + "/kiln_gpu_fused_cast";
    std::filesystem::remove_all(dir);
    cfg.mutable_checkpoint()->set_dir(dir + "/runs");
    TrainConfig first = cfg;  // the checkpoint: step 3 of a 3-step run
    first.mutable_training()->set_max_steps(3);
    first.mutable_checkpoint()->set_dir(dir + "/first");
    launch::Trainer t(first, parallel::World{});
    t.set_quiet(true);
    ASSERT_TRUE(t.init().ok());
    ASSERT_TRUE(t.run().ok());
    absl::StatusOr<std::string> ckpt = t.save_checkpoint();
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().message();
    const CastRun off = run_with_restore(cfg, *ckpt, false);
    const CastRun on = run_with_restore(cfg, *ckpt, true);
    ASSERT_EQ(off.losses.size(), 9u);
    ASSERT_EQ(on.losses.size(), 9u);
    for (size_t i = 0; i < off.losses.size(); ++i)
      EXPECT_EQ(std::memcmp(&off.losses[i], &on.losses[i], sizeof(double)), 0)
          << "step " << i << ": " << off.losses[i] << " vs " << on.losses[i];
    ASSERT_EQ(off.params.size(), on.params.size());
    for (size_t i = 0; i < off.params.size(); ++i) {
      ASSERT_EQ(off.params[i].nbytes(), on.params[i].nbytes());
      EXPECT_EQ(std::memcmp(off.params[i].raw(), on.params[i].raw(), off.params[i].nbytes()), 0)
          << "parameter " << i;
    }
    EXPECT_EQ(off.casts, 9);
    if (dtype == PrecisionConfig::BF16) {
      EXPECT_EQ(on.casts, 2) << "one cast per run(), at its first step";
    } else {  // a step the scaler skips (an overflow) writes no copies: the next one casts
      EXPECT_LT(on.casts, off.casts);
    }
  }
}

}  // namespace
}  // namespace kiln
