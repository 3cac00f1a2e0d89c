// The Trainer's composition (init: the fixed order of docs/DESIGN.md) and its loop (run: one step
// after another, evaluation and samples between them, the stop check after each).
#include "launch/trainer.h"

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "core/backend.h"
#include "core/check.h"
#include "core/nn/precast.h"
#include "launch/checkpoint.h"
#include "launch/config_agree.h"
#include "launch/pipeline_stage.h"
#include "launch/signals.h"
#include "launch/trainer_log.h"
#include "parallel/file_comm.h"

namespace kiln::launch {
namespace {

// Test hook of the non-finite guard's tests: KILN_INJECT_NON_FINITE="RANK:FIRST-LAST:WHAT" makes
// rank RANK's steps FIRST..LAST (0-based) see a NaN loss ("loss") or NaN gradients ("grad", after
// they were synchronised, so that only that rank sees them). Returns WHAT for an injected step.
const char* injected_non_finite(int rank, int64_t step) {
  const char* spec = std::getenv("KILN_INJECT_NON_FINITE");
  if (spec == nullptr) return nullptr;
  int r = -1;
  long long first = -1, last = -1;
  static char what[8] = {0};
  if (std::sscanf(spec, "%d:%lld-%lld:%7s", &r, &first, &last, what) != 4 || r != rank ||
      step < first || step > last)
    return nullptr;
  return what;
}

}  // namespace

Trainer::Trainer(TrainConfig config, parallel::World world)
    : cfg_(std::move(config)), world_(world) {}
// Whatever the side stream still does must be ordered before the compute stream reuses the memory.
Trainer::~Trainer() { join_optimizer(); }

absl::Status Trainer::init() {
  // Everything that can fail for outside reasons (layout, files, data) fails here, in this order:
  // mesh -> model -> pipeline split -> tensor parallel -> recompute -> data parallel / ZeRO ->
  // forward-backward; then the schedules, the data, a checkpoint to resume and the metrics.
  absl::Status s = make_device();
  // Every rank must have the same config before any group is built from it (config_agree.h).
  if (s.ok() && world_.size > 1) {
    absl::StatusOr<std::unique_ptr<parallel::Communicator>> w = parallel::make_world_comm(world_);
    s = w.ok() ? check_config_agreement(cfg_, **w) : w.status();
  }
  if (s.ok()) s = make_mesh();
  if (s.ok() && exclusive_) s = lock_run_folder();
  if (!s.ok()) return s;
  // A checkpoint to resume (checkpoint.resume) wins over training.init_from.
  absl::StatusOr<std::string> resume = find_resume_checkpoint(cfg_.checkpoint());
  if (!resume.ok()) return resume.status();
  if (!resume->empty() && !cfg_.training().init_from().empty() && world_.rank == 0)
    std::printf(
        "kiln: resuming %s; training.init_from %s is not used (it only starts a run "
        "that has no checkpoint yet)\n",
        resume->c_str(), cfg_.training().init_from().c_str());
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
  struct JoinAtExit {  // KILN_OVERLAP_OPTIM: every way out leaves no optimizer step pending
    const Trainer* t;
    ~JoinAtExit() { t->join_optimizer(); }
  } join_at_exit{this};
  sum.first_step = step_;
  // Whatever happened to the parameters since the last step (a checkpoint restore, a test writing
  // them) is unknown here: the first step casts them afresh.
  if (precast_cache_) precast_cache_->set_current(false);
  if (step_ == 0) evaluate_and_log(0, &sum);
  for (int64_t step = step_; step < max_steps; ++step) {
    if (budget > 0 && tokens_seen_ >= budget) break;
    maybe_inject_fault(world_.rank, step);
    run_step(step, &sum);
    if (non_finite_run_ >= cfg_.training().max_non_finite_steps()) {
      stop_non_finite(&sum);
      return sum;  // nothing saved: the state is the last finite one, and a checkpoint has it
    }
    const bool last = step + 1 == max_steps || (budget > 0 && tokens_seen_ >= budget);
    if (eval_every > 0 && (step + 1) % eval_every == 0 && !last) evaluate_and_log(step + 1, &sum);
    if (sample_every > 0 && (step + 1) % sample_every == 0 && !last) {
      std::string s = sample(step + 1);
      if (!quiet_ && world_.rank == 0) std::printf("sample: %s\n", s.c_str());
    }
    // A metrics file that cannot be written (a full disk) ends the run: records are never lost
    // quietly. (Rank 0 writes them; the launcher ends the other ranks when it exits.)
    if (absl::Status m = metrics_.flush(); !m.ok()) return m;
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
  mark(StepPhases::kStart);
  double gnorm = 0;
  seq_len_ = seq;
  batch_ = gb;
  const double lr =
      lr_.at(by_tokens_ ? static_cast<double>(tokens_seen_) : static_cast<double>(step));
  const double loss = train_step(lr, seq, gb, &gnorm);
  if (device_.is_cuda()) cuda_backend().synchronize();
  mark(StepPhases::kSynced);
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
  non_finite_run_ = health_.non_finite ? non_finite_run_ + 1 : 0;
  if (!health_.applied) {
    ++sum->skipped_steps;
    log_skip(step, loss, gnorm);
  }
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
  Tensor loss_sum;
  {
    std::optional<nn::PrecastScope> precast;
    if (precast_cache_) {
      precast.emplace(*precast_cache_);  // no cast when the last step wrote the copies
    } else if (!precast_.empty()) {
      precast.emplace(precast_, compute_);
    }
    loss_sum = forward_backward_->run(next, accum, loss_scale, *dp_);
  }
  mark(StepPhases::kLaunched);
  // The logged loss: this rank's mean over its micro-batches, averaged over the dp group only (the
  // ranks of one model replica, tp and pp, compute one loss together).
  double local = loss_sum.item() / static_cast<double>(accum);
  mark(StepPhases::kLoss);
  const char* inject = injected_non_finite(world_.rank, step_);
  if (inject && std::strcmp(inject, "loss") == 0) local = NAN;
  if (inject && std::strcmp(inject, "grad") == 0) dp_->scale_grads(NAN);
  const double loss =
      dp > 1 ? mesh_->dp().all_reduce_scalar(local) / static_cast<double>(dp) : local;
  const double raw_norm = dp_->grad_norm();  // of the scaled gradients under fp16
  mark(StepPhases::kNorm);
  // The non-finite guard: every rank must take the same decision, so it is made on reduced values
  // (2: the loss is not finite, 1: only the gradient norm). The loss is averaged over dp and the
  // norm is over all-reduced gradients (or all-reduced itself), the same on every rank of a
  // data-parallel layout; with tp / pp the loss is not reduced over those groups, so the flag is
  // agreed over the world (one more scalar all-reduce per step only there).
  double bad = !std::isfinite(loss) ? 2 : !std::isfinite(raw_norm) ? 1 : 0;
  if (mesh_->dims().tp * mesh_->dims().pp > 1)
    bad = mesh_->world().all_reduce_scalar(bad, parallel::ReduceOp::kMax);
  health_ = {bad == 0, bad == 2 || (bad == 1 && !scaler_), bad == 1 && scaler_ != nullptr};
  if (scaler_) scaler_->update(bad != 0);
  *gnorm = raw_norm / loss_scale;
  bool side = false;  // the step ran on the side stream
  if (health_.applied) {
    // The fp16 unscale and the clipping factor, the last of them folded into the optimizer step
    // (the same result as scaling the gradients first, one pass over them less on the GPU).
    double grad_scale = scaler_ ? 1.0 / loss_scale : 1.0;
    const double clip = cfg_.optimizer().grad_clip();
    if (clip > 0 && *gnorm > clip) {
      if (grad_scale != 1.0) dp_->scale_grads(grad_scale);
      grad_scale = clip / (*gnorm + 1e-6);
    }
    side = step_on_side_stream(lr, grad_scale);
    if (!side) {
      dp_->step(lr, grad_scale);
      sync_tied_weights(chunk_ptrs(), mesh_->pp());  // GPT-2 with pp > 1: the head's copy
    }
    // The next step's scope reuses the copies only if this step wrote every one of them.
    if (precast_cache_) precast_cache_->set_current(dp_->optimizer().last_step_wrote_copies());
  }
  // At ZeRO stage 0 this only marks the gradients stale: no kernel, and the next backward writes
  // its first gradients over them (with KILN_LAZY_ZERO_GRAD=0 the side-stream step zeroed them).
  if (!side || dp_->marks_grads_stale()) dp_->zero_grad();
  mark(StepPhases::kStepped);
  return loss;
}

bool Trainer::step_on_side_stream(double lr, double grad_scale) {
  if (overlap_groups_.empty()) return false;
  nn::PrecastCache& cache = *precast_cache_;
  dp_->settle_grads();      // any stale gradient zeroed on the compute stream first
  cache.begin_side_step();  // the side stream waits for the gradients (and any scaling of them)
  // The kernel zeroes each gradient it reads unless dp_->zero_grad only marks them stale after
  // (never a memset on the compute stream meanwhile: the side stream still reads them).
  const bool zero = !dp_->marks_grads_stale();
  return dp_->optimizer().step_grouped(lr, grad_scale, overlap_groups_, cache.groups(),
                                       cache.side_stream(), zero,
                                       [&cache](int g) { cache.end_group(g); });
}

absl::Status Trainer::finish_run(TrainSummary* sum) {
  join_optimizer();
  if (cfg_.checkpoint().save_at_end() && saved_step_ != step_) {
    absl::StatusOr<std::string> path = save_checkpoint();
    if (!path.ok()) return path.status();
    sum->checkpoint = *path;
  }
  evaluate_and_log(sum->steps, sum);
  sum->sample = sample(sum->steps);
  if (absl::Status m = metrics_.flush(); !m.ok()) return m;
  sum->tokens = tokens_seen_;
  sum->seconds = now_s() - t_start_;
  print_end(*sum);
  if (StepPhases::enabled() && world_.rank == 0) std::printf("%s", phases_.summary().c_str());
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
