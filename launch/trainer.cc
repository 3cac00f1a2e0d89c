// The Trainer's composition (init: the fixed order of docs/DESIGN.md) and its loop (run: one step
// after another, evaluation and samples between them, the stop check after each).
#include "launch/trainer.h"

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/backend.h"
#include "core/check.h"
#include "launch/checkpoint.h"
#include "launch/pipeline_stage.h"
#include "launch/signals.h"
#include "launch/trainer_log.h"

namespace kiln::launch {
namespace {

#ifndef KILN_GIT_COMMIT
#define KILN_GIT_COMMIT "unknown"
#endif

}  // namespace

Trainer::Trainer(TrainConfig config, parallel::World world)
    : cfg_(std::move(config)), world_(world) {}
Trainer::~Trainer() = default;

absl::Status Trainer::init() {
  // Everything that can fail for outside reasons (layout, files, data) fails here, in this order:
  // mesh -> model -> pipeline split -> tensor parallel -> recompute -> data parallel / ZeRO ->
  // forward-backward; then the schedules, the data, a checkpoint to resume and the metrics.
  absl::Status s = make_device();
  if (s.ok()) s = make_mesh();
  if (!s.ok()) return s;
  // A checkpoint to resume (checkpoint.resume) wins over training.init_from.
  absl::StatusOr<std::string> resume = find_resume_checkpoint(cfg_.checkpoint());
  if (!resume.ok()) return resume.status();
  s = make_model(/*init_from=*/resume->empty());
  if (s.ok()) s = apply_model_parallel();
  if (!s.ok()) return s;
  apply_recompute();
  make_data_parallel();
  make_forward_backward();
  make_schedules();
  s = make_sources();
  if (s.ok() && !resume->empty())
    s = agree_across_ranks(mesh_->world(), restore_checkpoint(*resume), "loading the checkpoint");
  if (s.ok()) s = open_metrics();
  return s;
}

absl::StatusOr<TrainSummary> Trainer::run() {
  TrainSummary sum;
  const int64_t max_steps = cfg_.training().max_steps();
  const int64_t budget = cfg_.training().token_budget();
  const int64_t eval_every = cfg_.eval().every_n_steps();
  const int64_t sample_every = cfg_.eval().sample_every();
  t_start_ = now_s();
  print_start();
  StopSignalScope signals(cfg_.checkpoint().save_on_signal());
  sum.first_step = step_;
  if (step_ == 0) evaluate_and_log(0, &sum);
  for (int64_t step = step_; step < max_steps; ++step) {
    if (budget > 0 && tokens_seen_ >= budget) break;
    maybe_inject_fault(world_.rank, step);
    run_step(step, &sum);
    const bool last = step + 1 == max_steps || (budget > 0 && tokens_seen_ >= budget);
    if (eval_every > 0 && (step + 1) % eval_every == 0 && !last) evaluate_and_log(step + 1, &sum);
    if (sample_every > 0 && (step + 1) % sample_every == 0 && !last) {
      std::string s = sample(step + 1);
      if (!quiet_ && world_.rank == 0) std::printf("sample: %s\n", s.c_str());
    }
    metrics_.flush();
    absl::StatusOr<bool> stop = checkpoint_after_step(&sum);
    if (!stop.ok()) return stop.status();
    if (*stop) break;
  }
  sum.steps = step_;
  sum.tokens = tokens_seen_;
  if (sum.interrupted) return sum;  // saved; no final evaluation or sample
  absl::Status s = finish_run(&sum);
  if (!s.ok()) return s;
  return sum;
}

void Trainer::run_step(int64_t step, TrainSummary* sum) {
  const int64_t multiple = cfg_.parallel().micro_batch_size() * mesh_->dims().dp;
  const int64_t seq = curriculum_.at(step);
  const int64_t gb = ramp_.at(static_cast<double>(tokens_seen_), multiple);
  const double t0 = now_s();
  double gnorm = 0;
  seq_len_ = seq;
  batch_ = gb;
  const double lr =
      lr_.at(by_tokens_ ? static_cast<double>(tokens_seen_) : static_cast<double>(step));
  const double loss = train_step(lr, seq, gb, &gnorm);
  if (device_.is_cuda()) cuda_backend().synchronize();
  const double dt = now_s() - t0;
  const int64_t tokens = gb * seq;
  tokens_seen_ += tokens;
  train_time_ += dt;
  if (step > sum->first_step) {  // the first step includes one-time setup (allocator, kernels)
    elapsed_ += dt;
    tokens_timed_ += tokens;
    ++steps_timed_;
  }
  sum->train_losses.push_back(loss);
  log_step(step, loss, lr, gnorm, tokens, dt);
  ++sum->steps;
  step_ = step + 1;
  last_lr_ = lr;
}

double Trainer::train_step(double lr, int64_t seq_len, int64_t global_batch, double* gnorm) {
  const int64_t dp = mesh_->dims().dp;
  const int64_t micro = cfg_.parallel().micro_batch_size();
  const int64_t accum = std::max<int64_t>(1, global_batch / (micro * dp));
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  auto next = [&]() -> parallel::MicroBatch {
    absl::StatusOr<Batch> b = train_->next(micro, seq_len);
    KILN_CHECK(b.ok()) << "training data: " << b.status().message();
    return {to_device(b->inputs), to_device(b->targets)};  // in this order (the pinned ring)
  };
  // Forward and backward of every micro-batch, gradients synchronised by data parallel / ZeRO.
  Tensor loss_sum = forward_backward_->run(next, accum, loss_scale, *dp_);
  bool apply = true;
  if (scaler_) {
    const bool bad = dp_->grads_non_finite();
    apply = scaler_->update(bad);
    if (apply) dp_->scale_grads(1.0 / loss_scale);
  }
  *gnorm = apply ? dp_->clip_grad_norm(cfg_.optimizer().grad_clip()) : NAN;
  if (apply) dp_->step(lr);
  if (apply) sync_tied_weights(*model_, mesh_->pp());  // GPT-2 with pp > 1: the head's copy
  dp_->zero_grad();
  // The logged loss: this rank's mean over its micro-batches, averaged over the dp group only (the
  // ranks of one model replica, tp and pp, compute one loss together; the pipeline executor
  // broadcasts the last stage's loss over pp, so every stage holds it).
  const double local = loss_sum.item() / static_cast<double>(accum);
  return dp > 1 ? mesh_->dp().all_reduce_scalar(local) / static_cast<double>(dp) : local;
}

absl::Status Trainer::finish_run(TrainSummary* sum) {
  if (cfg_.checkpoint().save_at_end() && saved_step_ != step_) {
    absl::StatusOr<std::string> path = save_checkpoint();
    if (!path.ok()) return path.status();
    sum->checkpoint = *path;
  }
  evaluate_and_log(sum->steps, sum);
  sum->sample = sample(sum->steps);
  metrics_.flush();
  sum->tokens = tokens_seen_;
  sum->seconds = now_s() - t_start_;
  print_end(*sum);
  return absl::OkStatus();
}

absl::StatusOr<bool> Trainer::checkpoint_after_step(TrainSummary* sum) {
  const CheckpointConfig& k = cfg_.checkpoint();
  int sig = k.save_on_signal() ? static_cast<int>(g_stop_signal) : 0;
  if (k.save_on_signal() && world_.size > 1)  // every rank must stop at the same step
    sig = static_cast<int>(mesh_->world().all_reduce_scalar(sig, parallel::ReduceOp::kMax));
  const bool periodic = k.every_n_steps() > 0 && step_ % k.every_n_steps() == 0;
  if (!periodic && sig == 0) return false;
  absl::StatusOr<std::string> path = save_checkpoint();
  if (!path.ok()) return path.status();
  sum->checkpoint = *path;
  if (sig == 0) return false;
  sum->interrupted = true;
  set_agreed_stop_signal(sig);  // train_cli's exit status (launch/signals.h)
  if (world_.rank == 0) {
    std::printf(
        "kiln: caught %s: saved %s after step %lld; stopping (run the same command to "
        "resume)\n",
        signal_name(sig).c_str(), path->c_str(), static_cast<long long>(step_));
    std::fflush(stdout);
  }
  return true;
}

}  // namespace kiln::launch
