// KILN_OVERLAP_OPTIM on a GPU (label gpu; skips without one): the AdamW step on the side stream,
// group by group, with the next forward waiting per group, against the same run with the step on
// the compute stream, in deterministic mode, for a tiny GPT-2 and a tiny Llama. Every group's
// launches are held back on the side stream by a spin (set_overlap_test_delay_us), so that a read
// that does not wait for its group, or a join point that does not join, sees old values. The runs
// evaluate every 2 steps and save a checkpoint every 3 (join points in the middle of a run), then
// restore the step-3 checkpoint into the same Trainer and run its last 3 steps again: the losses,
// the validation losses, the checkpoints' bytes and the final parameters and moments must be
// bit-identical, and the counters must show that the side stream ran every step and that the
// forwards waited group by group.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/backend.h"
#include "core/check.h"
#include "core/nn/precast.h"
#include "core/testing/require_gpu.h"
#include "launch/testing/tiny_config.h"
#include "launch/trainer.h"
#include "parallel/data_parallel.h"

namespace kiln {
namespace {

constexpr int64_t kDelayUs = 2000;  // per group, before its launches on the side stream

TrainConfig config(bool llama, const std::string& dir) {
  const std::string model =
      llama ? "model { preset: \"llama-tiny\" family: LLAMA vocab_size: 128 max_seq_len: 32 "
              "n_layer: 2 n_head: 4 n_kv_head: 2 d_model: 64 d_ff: 128 } "
            : "model { vocab_size: 512 max_seq_len: 64 n_head: 4 d_model: 128 } data { seq_len: "
              "64 } ";
  TrainConfig c = testing::tiny_config(
      dir, absl::StrCat(model, R"pb(
        training { global_batch_size: 16 max_steps: 6 seed: 11 deterministic: true }
        parallel { micro_batch_size: 8 }
        optimizer { lr: 3e-3 grad_clip: 1.0 }
        schedule { lr { warmup_steps: 2 } }
        eval { every_n_steps: 2 batches: 2 sample_every: 0 }
        checkpoint { every_n_steps: 3 keep_last: 0 }
        device: CUDA
        precision { dtype: BF16 }
      )pb"));
  c.mutable_checkpoint()->set_dir(dir + "/checkpoints");
  return c;
}

std::string bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Run {
  std::vector<double> losses;
  std::vector<std::pair<int64_t, double>> val;
  std::vector<std::string> checkpoints;  // rank files: step 3, step 6, step 6 after the restore
  std::vector<Tensor> state;             // parameters, then moments, on the CPU
  nn::OverlapCounts counts;              // this run's
};

// Six steps, then the step-3 checkpoint restored into the same Trainer and its last 3 steps again.
// lazy: KILN_LAZY_ZERO_GRAD (off: the side-stream kernel zeroes the gradients it reads).
Run run(bool llama, bool overlap, bool lazy) {
  const std::string dir = ::testing::TempDir() + "/kiln_gpu_overlap_" + (llama ? "llama" : "gpt2") +
                          (overlap ? "_on" : "_off") + (lazy ? "" : "_zeroing");
  std::filesystem::remove_all(dir);
  nn::set_overlap_optim_override(overlap ? 1 : 0);
  parallel::set_lazy_zero_grad_override(lazy ? 1 : 0);
  nn::set_overlap_test_delay_us(overlap ? kDelayUs : 0);
  const nn::OverlapCounts c0 = nn::overlap_counts();
  Run out;
  {
    launch::Trainer t(config(llama, dir), parallel::World{});
    t.set_quiet(true);
    absl::Status s = t.init();
    KILN_CHECK(s.ok()) << s.message();
    const std::string ckpt = dir + "/checkpoints/step_0000000";
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1) {
        s = t.restore_checkpoint(ckpt + "3");
        KILN_CHECK(s.ok()) << s.message();
      }
      auto r = t.run();
      KILN_CHECK(r.ok()) << r.status().message();
      out.losses.insert(out.losses.end(), r->train_losses.begin(), r->train_losses.end());
      out.val.insert(out.val.end(), r->val_losses.begin(), r->val_losses.end());
      if (pass == 0) out.checkpoints.push_back(bytes(ckpt + "3/rank_00000.bin"));
      out.checkpoints.push_back(bytes(ckpt + "6/rank_00000.bin"));
    }
    optim::Optimizer& opt = t.data_parallel().optimizer();
    for (const nn::Parameter& p : opt.params()) out.state.push_back(p.tensor.to(Device::cpu()));
    for (const auto& [name, m] : opt.state()) out.state.push_back(m.to(Device::cpu()));
  }
  const nn::OverlapCounts c1 = nn::overlap_counts();
  out.counts = {c1.side_steps - c0.side_steps, c1.group_waits - c0.group_waits, c1.joins - c0.joins,
                c1.groups};
  nn::set_overlap_optim_override(-1);
  nn::set_overlap_test_delay_us(0);
  parallel::set_lazy_zero_grad_override(-1);
  return out;
}

void expect_overlap_identical(bool llama, bool lazy = true) {
  const Run off = run(llama, false, lazy);
  const Run on = run(llama, true, lazy);
  ASSERT_EQ(off.losses.size(), 9u);
  ASSERT_EQ(on.losses.size(), 9u);
  for (size_t i = 0; i < off.losses.size(); ++i)
    EXPECT_EQ(std::memcmp(&off.losses[i], &on.losses[i], sizeof(double)), 0)
        << "step " << i << ": " << off.losses[i] << " vs " << on.losses[i];
  ASSERT_EQ(off.val.size(), on.val.size());
  ASSERT_GE(off.val.size(), 4u);
  for (size_t i = 0; i < off.val.size(); ++i)
    EXPECT_EQ(std::memcmp(&off.val[i].second, &on.val[i].second, sizeof(double)), 0)
        << "evaluation at step " << off.val[i].first;
  ASSERT_EQ(off.checkpoints.size(), 3u);
  ASSERT_EQ(on.checkpoints.size(), 3u);
  for (size_t i = 0; i < off.checkpoints.size(); ++i) {
    EXPECT_FALSE(off.checkpoints[i].empty()) << "checkpoint " << i;
    EXPECT_TRUE(off.checkpoints[i] == on.checkpoints[i]) << "checkpoint " << i << " differs";
  }
  ASSERT_EQ(off.state.size(), on.state.size());
  for (size_t i = 0; i < off.state.size(); ++i) {
    ASSERT_EQ(off.state[i].nbytes(), on.state[i].nbytes());
    EXPECT_EQ(std::memcmp(off.state[i].raw(), on.state[i].raw(), off.state[i].nbytes()), 0)
        << "state tensor " << i;
  }
  EXPECT_EQ(off.counts.side_steps, 0);
  EXPECT_EQ(off.counts.group_waits, 0);
  // Every step (6 + 3, none skipped in bf16) ran on the side stream.
  EXPECT_EQ(on.counts.side_steps, 9);
  EXPECT_GE(on.counts.groups, 4) << "the parameters in several groups";
  // Three forwards follow a side-stream step with no join point between (steps 1 and 5 of the
  // first pass, step 5 of the second; the others follow an evaluation or a checkpoint). Each
  // waits at least for the embedding's group (first) and the last group (the head), and never
  // more than once per group.
  EXPECT_GE(on.counts.group_waits, 3 * 2);
  EXPECT_LE(on.counts.group_waits, 3 * on.counts.groups);
  // Join points that found a step pending: the evaluations after steps 2 and 4 and the
  // checkpoints after 3 and 6 of the first pass, the evaluation after 4 and the checkpoint after
  // 6 of the second (the forwards' own waits cover their backwards).
  EXPECT_GE(on.counts.joins, 6);
}

TEST(GpuOverlapOptim, Gpt2IsBitIdenticalAcrossEvalAndCheckpoints) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  expect_overlap_identical(/*llama=*/false);
}

// With KILN_LAZY_ZERO_GRAD=0 the side-stream kernel zeroes every gradient it reads, and the
// compute-stream run zeroes the buffers after its step.
TEST(GpuOverlapOptim, Gpt2WithZeroedBuffersIsBitIdentical) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  expect_overlap_identical(/*llama=*/false, /*lazy=*/false);
}

TEST(GpuOverlapOptim, LlamaIsBitIdenticalAcrossEvalAndCheckpoints) {
  if (!cuda_available()) KILN_GPU_SKIP("no GPU visible");
  expect_overlap_identical(/*llama=*/true);
}

}  // namespace
}  // namespace kiln
