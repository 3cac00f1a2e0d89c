// The training loop.
#include "launch/trainer.h"

#include <fnmatch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/check.h"
#if KILN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif
#include "core/ops/elementwise.h"
#include "core/ops/view.h"
#include "launch/checkpoint.h"
#include "launch/hf_mapping.h"
#include "models/generate.h"
#include "models/presets.h"
#include "parallel/file_comm.h"

namespace kiln::launch {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string human_time(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s);
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t / 60) % 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

std::string human_count(double v) {
  if (v >= 1e9) return absl::StrFormat("%.2fG", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

optim::LrKind lr_kind(LrSchedule::Kind k) {
  switch (k) {
    case LrSchedule::WSD:
      return optim::LrKind::kWsd;
    case LrSchedule::LINEAR:
      return optim::LrKind::kLinear;
    case LrSchedule::CONSTANT:
      return optim::LrKind::kConstant;
    default:
      return optim::LrKind::kCosine;
  }
}

optim::CurriculumKind curriculum_kind(SeqLenCurriculum::Kind k) {
  switch (k) {
    case SeqLenCurriculum::FIXED_LINEAR:
      return optim::CurriculumKind::kFixedLinear;
    case SeqLenCurriculum::FIXED_ROOT:
      return optim::CurriculumKind::kFixedRoot;
    case SeqLenCurriculum::FIXED_DISCRETE:
      return optim::CurriculumKind::kFixedDiscrete;
    default:
      return optim::CurriculumKind::kNone;
  }
}

// Test hook for the fault-tolerance tests: KILN_FAULT_INJECT="RANK:STEP:ACTION" makes rank RANK, at
// the start of step STEP, die by SIGKILL ("kill"), exit(3) ("exit") or sleep forever ("hang").
void maybe_inject_fault(int rank, int64_t step) {
  static const char* spec = std::getenv("KILN_FAULT_INJECT");
  if (!spec) return;
  int r = -1;
  long long s = -1;
  char action[16] = {0};
  if (std::sscanf(spec, "%d:%lld:%15s", &r, &s, action) != 3 || r != rank || s != step) return;
  std::fprintf(stderr, "kiln: fault injection: rank %d %s at step %lld\n", rank, action, s);
  std::fflush(stderr);
  if (std::strcmp(action, "kill") == 0) raise(SIGKILL);
  if (std::strcmp(action, "exit") == 0) std::_Exit(3);
  if (std::strcmp(action, "hang") == 0)
    for (;;) pause();
}

// SIGTERM / SIGINT while checkpoint.save_on_signal: the first one sets the flag (the trainer saves
// and stops after the current step); a second one gets the default action (exit at once).
volatile std::sig_atomic_t g_stop_signal = 0;

void on_stop_signal(int sig) {
  if (g_stop_signal != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_stop_signal = sig;
}

// Installs the handlers for the lifetime of a run and restores the previous ones after it.
class StopSignalScope {
 public:
  explicit StopSignalScope(bool on) : on_(on) {
    if (!on_) return;
    g_stop_signal = 0;
    struct sigaction sa = {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term_);
    sigaction(SIGINT, &sa, &old_int_);
  }
  ~StopSignalScope() {
    if (!on_) return;
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
  }

 private:
  bool on_;
  struct sigaction old_term_ = {}, old_int_ = {};
};

#ifndef KILN_GIT_COMMIT
#define KILN_GIT_COMMIT "unknown"
#endif

}  // namespace

void apply_decay_rules(const OptimizerConfig& oc, std::vector<nn::Parameter>* params) {
  const int min_dim = oc.has_decay_min_dim() ? oc.decay_min_dim() : 2;
  for (nn::Parameter& p : *params) {
    p.decay = p.tensor.dim() >= min_dim;
    for (const std::string& pat : oc.no_decay())
      if (fnmatch(pat.c_str(), p.name.c_str(), 0) == 0) p.decay = false;
  }
}

Trainer::Trainer(TrainConfig config, parallel::World world)
    : cfg_(std::move(config)), world_(world) {}
Trainer::~Trainer() = default;

absl::Status Trainer::init() {
  // Device and precision.
  const bool gpu = cfg_.device() == TrainConfig::CUDA ||
                   (cfg_.device() == TrainConfig::AUTO && cuda_available());
  if (gpu && !cuda_available())
    return absl::FailedPreconditionError("device: CUDA requested but no GPU is available");
  device_ = gpu ? Device::cuda(world_.local_rank) : Device::cpu();
#if KILN_WITH_CUDA
  if (gpu) {
    cuda::set_device(world_.local_rank);
    cuda::set_deterministic(cfg_.training().deterministic());
  }
#endif
  switch (cfg_.precision().dtype()) {
    case PrecisionConfig::BF16:
      compute_ = DType::kBF16;
      break;
    case PrecisionConfig::FP16:
      compute_ = DType::kF16;
      break;
    case PrecisionConfig::FP32:
      compute_ = DType::kF32;
      break;
    default:
      compute_ = gpu ? DType::kBF16 : DType::kF32;
  }
  if (compute_ == DType::kF16) {
    const auto& p = cfg_.precision();
    scaler_ = std::make_unique<optim::LossScaler>(
        p.has_loss_scale_init() ? p.loss_scale_init() : 65536.0,
        p.has_loss_scale_growth_interval() ? p.loss_scale_growth_interval() : 2000,
        p.has_loss_scale_growth() ? p.loss_scale_growth() : 2.0,
        p.has_loss_scale_backoff() ? p.loss_scale_backoff() : 0.5);
  }
  // The layout and the communicators (before the model: a bad layout fails at once).
  absl::Status s = make_layout(gpu);
  if (!s.ok()) return s;
  // Model.
  const uint64_t seed = cfg_.training().seed();
  models::ModelSpec spec = models::spec_from_config(cfg_.model());
  model_ = models::build_model(spec, seed);
  // A checkpoint to resume (checkpoint.resume) wins over training.init_from.
  absl::StatusOr<std::string> resume = find_resume_checkpoint(cfg_.checkpoint());
  if (!resume.ok()) return resume.status();
  if (resume->empty() && !cfg_.training().init_from().empty()) {
    s = import_safetensors(cfg_.training().init_from(), cfg_.model(), model_->parameters());
    if (!s.ok()) return absl::Status(s.code(), "training.init_from: " + std::string(s.message()));
    if (world_.rank == 0 && !quiet_)
      std::printf("kiln: initialised the model from %s\n", cfg_.training().init_from().c_str());
  }
  model_->to(device_);
  model_->set_compute_dtype(compute_);
  model_->set_recompute(
      cfg_.recompute().policy() == RecomputeConfig::FULL        ? models::Recompute::kFull
      : cfg_.recompute().policy() == RecomputeConfig::SELECTIVE ? models::Recompute::kSelective
                                                                : models::Recompute::kNone);
  model_->set_fp8(cfg_.precision().fp8_matmul());
  model_->dropout_generator() = Generator(seed * 1000003 + world_.rank);
  sample_gen_ = Generator(seed + 17);
  // Data parallel / ZeRO around the optimizer.
  std::vector<nn::Parameter> params = model_->parameters();
  const OptimizerConfig& oc = cfg_.optimizer();
  apply_decay_rules(oc, &params);
  parallel::DataParallelOptions dpo;
  dpo.zero_stage = cfg_.parallel().zero_stage();
  dpo.bucket_mb = cfg_.parallel().bucket_mb();
  dpo.gather_dtype = compute_;
  auto make_opt = [oc](std::vector<nn::Parameter> pieces) -> std::unique_ptr<optim::Optimizer> {
    if (oc.type() == OptimizerConfig::SGD)
      return std::make_unique<optim::SGD>(std::move(pieces), oc.momentum(), oc.weight_decay(),
                                          oc.nesterov());
    return std::make_unique<optim::AdamW>(
        std::move(pieces),
        optim::AdamWOptions{oc.beta1(), oc.beta2(), oc.eps(), oc.weight_decay()});
  };
  dp_ = std::make_unique<parallel::DataParallel>(*model_, params, *dp_comm_, dpo, make_opt);
  // Schedules.
  const auto& sc = cfg_.schedule();
  const int64_t seq = cfg_.data().seq_len();
  const int64_t gb = cfg_.training().global_batch_size();
  // With a token budget the LR schedule runs over tokens (warmup_steps count full-size steps), so
  // that a batch-size ramp or a sequence-length curriculum, which change the tokens per step, keep
  // the same schedule per token (Megatron schedules over samples for its ramp the same way);
  // training stops when the budget is used. Otherwise it runs over steps.
  const int64_t budget = cfg_.training().token_budget();
  by_tokens_ = budget > 0;
  int64_t max_steps = cfg_.training().max_steps();
  if (by_tokens_ && max_steps <= 0) max_steps = std::numeric_limits<int32_t>::max();
  cfg_.mutable_training()->set_max_steps(max_steps);
  const double unit = by_tokens_ ? static_cast<double>(gb * seq) : 1.0;
  lr_ = {lr_kind(sc.lr().kind()),
         oc.lr(),
         sc.lr().min_lr_ratio(),
         static_cast<double>(sc.lr().warmup_steps()) * unit,
         by_tokens_ ? static_cast<double>(budget) : static_cast<double>(max_steps),
         sc.lr().decay_fraction()};
  const int64_t dp = std::max(1, cfg_.parallel().dp());
  ramp_ = {sc.batch_ramp().start(), std::max(1, sc.batch_ramp().increment()), gb,
           static_cast<double>(sc.batch_ramp().ramp_tokens())};
  const auto& cc = sc.seq_len();
  curriculum_.kind = curriculum_kind(cc.kind());
  curriculum_.min_len = cc.min_len();
  curriculum_.max_len = cc.max_len() > 0 ? cc.max_len() : seq;
  curriculum_.steps = cc.steps();
  curriculum_.multiple = cc.has_step_multiple() ? cc.step_multiple() : 8;
  curriculum_.root_degree = cc.has_root_degree() ? cc.root_degree() : 2;
  curriculum_.lengths.assign(cc.discrete_lens().begin(), cc.discrete_lens().end());
  curriculum_.until.assign(cc.discrete_steps().begin(), cc.discrete_steps().end());
  if (curriculum_.kind == optim::CurriculumKind::kNone) curriculum_.max_len = seq;
  flops_per_token_full_ = training_flops_per_token(cfg_.model(), seq);
  (void)dp;
  // Data and metrics.
  s = make_sources();
  if (!s.ok()) return s;
  if (!resume->empty()) {
    s = agree_across_ranks(*world_comm_, restore_checkpoint(*resume), "loading the checkpoint");
    if (!s.ok()) return s;
  }
  if (world_.rank == 0) {
    s = metrics_.open(cfg_.logging().run_dir(), cfg_.logging().jsonl(),
                      cfg_.logging().tensorboard(), /*append=*/!resumed_from_.empty());
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Trainer::make_layout(bool gpu) {
  const ParallelConfig& p = cfg_.parallel();
  absl::StatusOr<parallel::ParallelDims> dims =
      parallel::make_dims(std::max(1, p.dp()), std::max(1, p.tp()), std::max(1, p.pp()), world_);
  if (!dims.ok()) return dims.status();
  dims_ = *dims;
  // The config checks for tp and pp (heads, layers, batches) are in place; the layers are not.
  if (dims_.tp > 1 || dims_.pp > 1)
    return absl::UnimplementedError(
        absl::StrCat(dims_.tp > 1 ? "parallel.tp" : "parallel.pp",
                     ": tensor and pipeline parallelism are not "
                     "built yet; kiln trains data parallel and ZeRO-1/2/3 (tp = ",
                     dims_.tp, ", pp = ", dims_.pp, " given, both must be 1)"));
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> world_comm =
      parallel::make_world_comm(world_);
  if (!world_comm.ok()) return world_comm.status();
  world_comm_ = std::move(*world_comm);
  parallel::set_collective_timeout(p.timeout_s());
  parallel::Communicator* base = world_comm_.get();
  if (gpu && world_.size > 1) {
    auto nccl = parallel::make_nccl(*world_comm_, world_.local_rank);
    if (!nccl.ok()) return nccl.status();
    gpu_comm_ = std::move(*nccl);
    base = gpu_comm_.get();
  }
  dp_comm_ = base;
  if (dims_.dp < world_.size) {  // ranks of one (tp, pp) coordinate form a dp group
    const int r = world_.rank;
    dp_group_ = base->split(dims_.pp_rank(r) * dims_.tp + dims_.tp_rank(r), dims_.dp_rank(r));
    dp_comm_ = dp_group_.get();
  }
  return absl::OkStatus();
}

Tensor Trainer::to_device(const Tensor& host) {
  if (device_.is_cpu()) return host;
#if KILN_WITH_CUDA
  Tensor src = host.is_contiguous() ? host : host.contiguous();
  Tensor dst = Tensor::empty(src.shape(), src.dtype(), device_);
  pinned_.upload(dst.raw(), src.raw(), src.nbytes());
  return dst;
#else
  return host.to(device_);
#endif
}

absl::Status Trainer::make_sources() {
  const int dp = dims_.dp;
  const int dp_rank = dims_.dp_rank(world_.rank);
  const uint64_t seed = cfg_.data().has_seed() ? cfg_.data().seed() : cfg_.training().seed();
  if (cfg_.data().synthetic()) {
    const int64_t v = cfg_.model().vocab_size();
    train_ = make_synthetic_source(v, seed, dp_rank, dp);
    make_val_ = [v, seed] { return make_synthetic_source(v, seed, 0, 1, uint64_t{1} << 40); };
    return absl::OkStatus();
  }
  return make_shard_sources(cfg_, dp_rank, dp, &train_, &make_val_);
}

void Trainer::set_sources(std::unique_ptr<BatchSource> train, std::unique_ptr<BatchSource> val) {
  train_ = std::move(train);
  auto shared = std::shared_ptr<BatchSource>(std::move(val));
  make_val_ = nullptr;
  val_ = nullptr;
  if (shared) {
    const std::string start = shared->position();
    make_val_ = [shared, start]() -> std::unique_ptr<BatchSource> {
      (void)shared->restore(start);
      struct Borrowed : BatchSource {
        std::shared_ptr<BatchSource> s;
        absl::StatusOr<Batch> next(int64_t b, int64_t t) override { return s->next(b, t); }
        std::string position() const override { return s->position(); }
        absl::Status restore(const std::string& p) override { return s->restore(p); }
      };
      auto b = std::make_unique<Borrowed>();
      b->s = shared;
      return b;
    };
  }
}

double Trainer::train_step(double lr, int64_t seq_len, int64_t global_batch, double* gnorm) {
  const int64_t dp = dp_comm_->size();
  const int64_t micro = cfg_.parallel().micro_batch_size();
  const int64_t accum = std::max<int64_t>(1, global_batch / (micro * dp));
  const double loss_scale = scaler_ ? scaler_->scale() : 1.0;
  Tensor loss_sum;
  for (int64_t i = 0; i < accum; ++i) {
    absl::StatusOr<Batch> b = train_->next(micro, seq_len);
    KILN_CHECK(b.ok()) << "training data: " << b.status().message();
    Tensor x = to_device(b->inputs), y = to_device(b->targets);
    dp_->begin_micro_step(i + 1 == accum);
    Tensor loss = model_->loss(x, y);
    Tensor scaled = scale(loss, loss_scale / static_cast<double>(accum));
    scaled.backward();
    dp_->end_micro_step();
    NoGradGuard ng;
    Tensor l =
        cast(loss.detach(), DType::kF64);  // summed in f64 on the device: no sync per micro-step
    loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
  }
  bool apply = true;
  if (scaler_) {
    const bool bad = dp_->grads_non_finite();
    apply = scaler_->update(bad);
    if (apply) dp_->scale_grads(1.0 / loss_scale);
  }
  *gnorm = apply ? dp_->clip_grad_norm(cfg_.optimizer().grad_clip()) : NAN;
  if (apply) dp_->step(lr);
  dp_->zero_grad();
  const double local = loss_sum.item() / static_cast<double>(accum);
  return dp > 1 ? world_comm_->all_reduce_scalar(local) / static_cast<double>(dp) : local;
}

double Trainer::evaluate() {
  if (!make_val_) return NAN;
  NoGradGuard ng;
  model_->set_training(false);
  dp_->begin_forward();  // ZeRO-3: the embeddings and head are gathered for the pass
  std::unique_ptr<BatchSource> val = make_val_();
  const int batches = cfg_.eval().has_batches() ? cfg_.eval().batches() : 20;
  const int64_t micro = cfg_.parallel().micro_batch_size();
  const int64_t seq = cfg_.data().seq_len();
  double total = 0;
  int n = 0;
  for (int i = 0; i < batches; ++i) {
    absl::StatusOr<Batch> b = val->next(micro, seq);
    if (!b.ok()) break;  // a small validation set ends early
    total += model_->loss(to_device(b->inputs), to_device(b->targets)).item();
    ++n;
  }
  dp_->end_forward();
  model_->set_training(true);
  return n ? total / n : NAN;
}

std::string Trainer::sample(int64_t step) {
  const int64_t n = cfg_.eval().has_sample_tokens() ? cfg_.eval().sample_tokens() : 64;
  if (n <= 0) return "";
  std::vector<int64_t> prompt;
  if (!cfg_.eval().sample_prompt().empty() && codec_.encode)
    prompt = codec_.encode(cfg_.eval().sample_prompt());
  if (prompt.empty()) prompt = {codec_.eot >= 0 ? codec_.eot : 0};
  models::SampleOptions so;
  so.max_new_tokens = n;
  so.temperature = cfg_.eval().has_sample_temperature() ? cfg_.eval().sample_temperature() : 1.0;
  so.top_k = cfg_.eval().sample_top_k();
  dp_->begin_forward();
  std::vector<int64_t> ids = models::generate(*model_, prompt, so, sample_gen_);
  dp_->end_forward();
  std::string text;
  if (codec_.decode) {
    text = codec_.decode(ids);
  } else {
    text = absl::StrJoin(ids, " ");
  }
  metrics_.log_text("sample", step, "text", text);
  return text;
}

void Trainer::log_step(int64_t step, double loss, double lr, double gnorm, int64_t tokens,
                       double dt) {
  const int64_t max_steps = cfg_.training().max_steps();
  const double tok_s = tokens / std::max(dt, 1e-9);
  const double peak = cfg_.logging().peak_flops() > 0 ? cfg_.logging().peak_flops()
                      : device_.is_cuda()             ? 989e12
                                                      : 0.0;
  const double gpus = std::max(1, world_.size);
  const double mfu = peak > 0 ? tok_s * flops_per_token_full_ / (gpus * peak) : NAN;
  const MemoryStats mem = memory_stats(device_);
  const double eta = by_tokens_
                         ? elapsed_ / std::max<int64_t>(tokens_timed_, 1) *
                               static_cast<double>(cfg_.training().token_budget() - tokens_seen_)
                         : elapsed_ / std::max<int64_t>(steps_timed_, 1) * (max_steps - step - 1);
  metrics_.log("train", step,
               {{"loss", loss},
                {"lr", lr},
                {"grad_norm", gnorm},
                {"tokens_per_s", tok_s},
                {"mfu", mfu},
                {"tokens", static_cast<double>(tokens_seen_)},
                {"seq_len", static_cast<double>(seq_len_)},
                {"batch", static_cast<double>(batch_)},
                {"mem_peak_mib", mem.peak / 1048576.0},
                {"mem_reserved_mib", mem.reserved / 1048576.0}});
  const int every = cfg_.logging().has_log_every() ? cfg_.logging().log_every() : 1;
  if (quiet_ || world_.rank != 0 || (step % every != 0 && step + 1 != max_steps)) return;
  std::printf(
      "step %5lld/%lld | loss %.4f | lr %.2e | grad %.3f | %s tok/s | MFU %s | mem %.0f MiB | ETA "
      "%s\n",
      static_cast<long long>(step + 1), static_cast<long long>(max_steps), loss, lr, gnorm,
      human_count(tok_s).c_str(),
      std::isfinite(mfu) ? absl::StrFormat("%.1f%%", 100 * mfu).c_str() : "-", mem.peak / 1048576.0,
      human_time(eta).c_str());
  std::fflush(stdout);
}

absl::StatusOr<TrainSummary> Trainer::run() {
  TrainSummary sum;
  const int64_t max_steps = cfg_.training().max_steps();
  const int64_t budget = cfg_.training().token_budget();
  const int64_t dp = std::max(1, cfg_.parallel().dp());
  const int64_t multiple = cfg_.parallel().micro_batch_size() * dp;
  const int64_t eval_every = cfg_.eval().every_n_steps();
  const int64_t sample_every = cfg_.eval().sample_every();
  const double t_start = now_s();
  if (world_.rank == 0 && !quiet_)
    std::printf("kiln: %s, %s params, %s, device %s, %s compute\n",
                cfg_.model().preset().empty() ? "custom model" : cfg_.model().preset().c_str(),
                human_count(static_cast<double>(model_->num_parameters())).c_str(),
                cfg_.data().synthetic() ? "synthetic data" : "token shards", device_.str().c_str(),
                dtype_name(compute_));
  auto do_eval = [&](int64_t step) {
    const double v = evaluate();
    if (std::isnan(v)) return;
    sum.val_losses.emplace_back(step, v);
    metrics_.log("val", step,
                 {{"loss", v},
                  {"tokens", static_cast<double>(tokens_seen_)},
                  {"elapsed_s", now_s() - t_start},
                  {"train_s", train_time_}});
    if (!quiet_ && world_.rank == 0)
      std::printf("eval  step %lld | val loss %.4f\n", static_cast<long long>(step), v);
  };
  StopSignalScope signals(cfg_.checkpoint().save_on_signal());
  sum.first_step = step_;
  if (step_ == 0) do_eval(0);
  for (int64_t step = step_; step < max_steps; ++step) {
    if (budget > 0 && tokens_seen_ >= budget) break;
    maybe_inject_fault(world_.rank, step);
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
    if (step > sum.first_step) {  // the first step includes one-time setup (allocator, kernels)
      elapsed_ += dt;
      tokens_timed_ += tokens;
      ++steps_timed_;
    }
    sum.train_losses.push_back(loss);
    log_step(step, loss, lr, gnorm, tokens, dt);
    ++sum.steps;
    step_ = step + 1;
    last_lr_ = lr;
    const bool last = step + 1 == max_steps || (budget > 0 && tokens_seen_ >= budget);
    if (eval_every > 0 && (step + 1) % eval_every == 0 && !last) do_eval(step + 1);
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
  if (cfg_.checkpoint().save_at_end() && saved_step_ != step_) {
    absl::StatusOr<std::string> path = save_checkpoint();
    if (!path.ok()) return path.status();
    sum.checkpoint = *path;
  }
  do_eval(sum.steps);
  sum.sample = sample(sum.steps);
  metrics_.flush();
  sum.tokens = tokens_seen_;
  sum.seconds = now_s() - t_start;
  if (!quiet_ && world_.rank == 0) {
    std::printf("sample after %lld steps:\n%s\n", static_cast<long long>(sum.steps),
                sum.sample.c_str());
    std::printf("kiln: trained %lld steps, %s tokens in %s\n", static_cast<long long>(sum.steps),
                human_count(static_cast<double>(tokens_seen_)).c_str(),
                human_time(sum.seconds).c_str());
  }
  return sum;
}

// ---- checkpoints ----

std::vector<parallel::Piece> Trainer::checkpoint_pieces(bool for_load) {
  NoGradGuard ng;
  std::vector<parallel::Piece> out;
  if (for_load && dp_->zero_stage() < 3) {
    // Stages 0-2 keep whole parameters (views of the flat buffers the fp32 masters live in):
    // filling them fills this rank's masters and every replica's copy at once.
    for (const nn::Parameter& p : model_->parameters())
      out.push_back({p.name, p.tensor.shape(), 0, p.tensor.reshape({p.tensor.numel()})});
  } else {
    out = dp_->parameter_pieces();
  }
  for (parallel::Piece& p : dp_->optimizer_pieces()) {
    p.name = optimizer_tensor_name(p.name);
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<std::string> Trainer::save_checkpoint() {
  const double t0 = now_s();
  Manifest h;
  *h.mutable_config() = cfg_;
  h.set_step(step_);
  h.set_tokens_seen(tokens_seen_);
  h.set_optimizer_steps(dp_->optimizer().steps());
  h.set_kiln_version(KILN_GIT_COMMIT);
  ScheduleState* sc = h.mutable_schedule();
  sc->set_lr(last_lr_);
  sc->set_global_batch_size(static_cast<int32_t>(batch_));
  sc->set_seq_len(static_cast<int32_t>(seq_len_));
  if (scaler_) {
    sc->set_loss_scale(scaler_->scale());
    sc->set_loss_scale_good_steps(scaler_->good_steps());
    sc->set_skipped_steps(scaler_->skipped());
  }
  ParallelLayout* l = h.mutable_layout();
  l->set_world_size(world_.size);
  l->set_dp(dp_comm_->size());
  l->set_tp(std::max(1, cfg_.parallel().tp()));
  l->set_pp(std::max(1, cfg_.parallel().pp()));
  l->set_zero_stage(dp_->zero_stage());
  l->set_virtual_stages(std::max(1, cfg_.parallel().virtual_stages()));
  RankContribution mine;
  const int dp_rank = dp_comm_->rank();
  // Stage 0 replicates everything: data-parallel rank 0 stores it for all.
  if (dp_->zero_stage() > 0 || dp_rank == 0) mine.pieces = checkpoint_pieces(false);
  const GeneratorState drop = model_->dropout_generator().state(), smp = sample_gen_.state();
  for (auto [name, st] : {std::pair{"dropout", drop}, {"sample", smp}}) {
    RngState* r = &mine.rng.emplace_back();
    r->set_rank(world_.rank);
    r->set_generator(name);
    r->set_state(encode_generator_state(st.seed, st.offset));
  }
  LoaderState& ls = mine.loader.emplace_back();
  ls.set_rank(dp_rank);
  ls.set_position(train_->position());
  absl::StatusOr<std::string> path =
      launch::save_checkpoint(cfg_.checkpoint().dir(), h, mine, *world_comm_);
  if (!path.ok()) return path.status();
  saved_step_ = step_;
  if (world_.rank == 0) {
    const auto& k = cfg_.checkpoint();
    apply_retention(k.dir(), k.keep_last(), k.keep_every());
    if (!quiet_)
      std::printf("checkpoint: step %lld saved to %s (%.2f s)\n", static_cast<long long>(step_),
                  path->c_str(), now_s() - t0);
    std::fflush(stdout);
  }
  return path;
}

absl::Status Trainer::restore_checkpoint(const std::string& path) {
  // The model check first: a manifest from another model is reported as such, not as its files.
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(path, /*check_files=*/false);
  if (!m.ok()) return m.status();
  absl::Status s = check_model_matches(*m, cfg_.model(), model_->parameters(), path);
  if (s.ok()) s = check_checkpoint_files(path, *m);
  if (!s.ok()) return s;
  const auto& stored_opt = m->config().optimizer();
  if (stored_opt.type() != cfg_.optimizer().type())
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", path, ": optimizer.type is ", OptimizerConfig::Type_Name(stored_opt.type()),
        " there and ", OptimizerConfig::Type_Name(cfg_.optimizer().type()),
        " here (its state cannot carry over)"));
  if (world_.rank == 0)
    for (const std::string& d : model_field_differences(m->config().model(), cfg_.model(), false))
      std::fprintf(stderr, "kiln: warning: checkpoint %s: %s\n", path.c_str(), d.c_str());
  s = read_checkpoint_pieces(path, *m, checkpoint_pieces(true));
  if (!s.ok()) return s;
  dp_->optimizer().set_steps(m->optimizer_steps());
  step_ = m->step();
  tokens_seen_ = m->tokens_seen();
  last_lr_ = m->schedule().lr();
  batch_ = m->schedule().global_batch_size();
  seq_len_ = m->schedule().seq_len();
  for (const RngState& r : m->rng()) {
    if (r.rank() != world_.rank) continue;  // a rank the old layout lacked keeps its fresh seed
    uint64_t seed = 0, offset = 0;
    if (!decode_generator_state(r.state(), &seed, &offset))
      return absl::DataLossError(absl::StrCat("checkpoint ", path, ": rng state '", r.generator(),
                                              "' of rank ", r.rank(), " is not 16 bytes"));
    if (r.generator() == "dropout") model_->dropout_generator().set_state({seed, offset});
    if (r.generator() == "sample") sample_gen_.set_state({seed, offset});
  }
  // Loader positions are global (samples consumed by all ranks), so any data-parallel rank's
  // entry serves a layout with another dp.
  const LoaderState* pos = nullptr;
  for (const LoaderState& ls : m->loader())
    if (!pos || ls.rank() == dp_comm_->rank()) pos = &ls;
  if (pos) {
    s = train_->restore(pos->position());
    if (!s.ok())
      return absl::Status(s.code(),
                          absl::StrCat("checkpoint ", path, ": loader position: ", s.message()));
  }
  if (scaler_ && m->schedule().loss_scale() > 0)
    scaler_->restore(m->schedule().loss_scale(), m->schedule().loss_scale_good_steps(),
                     m->schedule().skipped_steps());
  resumed_from_ = path;
  saved_step_ = step_;
  if (world_.rank == 0) {
    const ParallelLayout& l = m->layout();
    std::string layout;
    if (l.world_size() != world_.size || l.dp() != dp_comm_->size() ||
        l.zero_stage() != dp_->zero_stage())
      layout = absl::StrFormat(", resharded from world %d dp %d zero_stage %d", l.world_size(),
                               l.dp(), l.zero_stage());
    std::printf("kiln: resumed from %s (step %lld, %lld tokens%s)\n", path.c_str(),
                static_cast<long long>(step_), static_cast<long long>(tokens_seen_),
                layout.c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Trainer::checkpoint_after_step(TrainSummary* sum) {
  const CheckpointConfig& k = cfg_.checkpoint();
  int sig = k.save_on_signal() ? static_cast<int>(g_stop_signal) : 0;
  if (k.save_on_signal() && world_.size > 1)  // every rank must stop at the same step
    sig = static_cast<int>(world_comm_->all_reduce_scalar(sig, parallel::ReduceOp::kMax));
  const bool periodic = k.every_n_steps() > 0 && step_ % k.every_n_steps() == 0;
  if (!periodic && sig == 0) return false;
  absl::StatusOr<std::string> path = save_checkpoint();
  if (!path.ok()) return path.status();
  sum->checkpoint = *path;
  if (sig == 0) return false;
  sum->interrupted = true;
  if (world_.rank == 0) {
    std::printf(
        "kiln: caught %s: saved %s after step %lld; stopping (run the same command to "
        "resume)\n",
        sig == SIGTERM  ? "SIGTERM"
        : sig == SIGINT ? "SIGINT"
                        : "a signal",
        path->c_str(), static_cast<long long>(step_));
    std::fflush(stdout);
  }
  return true;
}

}  // namespace kiln::launch
