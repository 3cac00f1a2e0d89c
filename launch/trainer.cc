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
#include "models/generate.h"
#include "models/presets.h"

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
        p.has_loss_scale_growth() ? p.loss_scale_growth() : 2.0);
  }
  // Model.
  const uint64_t seed = cfg_.training().seed();
  models::ModelSpec spec = models::spec_from_config(cfg_.model());
  model_ = models::build_model(spec, seed);
  model_->to(device_);
  model_->set_compute_dtype(compute_);
  model_->set_recompute(
      cfg_.recompute().policy() == RecomputeConfig::FULL        ? models::Recompute::kFull
      : cfg_.recompute().policy() == RecomputeConfig::SELECTIVE ? models::Recompute::kSelective
                                                                : models::Recompute::kNone);
  model_->dropout_generator() = Generator(seed * 1000003 + world_.rank);
  sample_gen_ = Generator(seed + 17);
  // Communicators, then data parallel / ZeRO around the optimizer.
  world_comm_ = world_.size > 1 ? parallel::make_cpu_world() : parallel::make_single();
  parallel::set_collective_timeout(cfg_.parallel().timeout_s());
  dp_comm_ = world_comm_.get();
  if (gpu && world_.size > 1) {
    auto nccl = parallel::make_nccl(*world_comm_, world_.local_rank);
    if (!nccl.ok()) return nccl.status();
    gpu_comm_ = std::move(*nccl);
    dp_comm_ = gpu_comm_.get();
  }
  std::vector<nn::Parameter> params = model_->parameters();
  const OptimizerConfig& oc = cfg_.optimizer();
  apply_decay_rules(oc, &params);
  parallel::DataParallelOptions dpo;
  dpo.zero_stage = cfg_.parallel().zero_stage();
  dpo.bucket_mb = cfg_.parallel().bucket_mb();
  dpo.gather_dtype = compute_;
  auto make_opt = [oc](std::vector<nn::Parameter> pieces) -> std::unique_ptr<optim::Optimizer> {
    if (oc.type() == OptimizerConfig::SGD)
      return std::make_unique<optim::SGD>(std::move(pieces), oc.momentum(), oc.weight_decay());
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
  flops_per_token_full_ = TrainingFlopsPerToken(cfg_.model(), seq);
  (void)dp;
  // Data and metrics.
  absl::Status s = make_sources();
  if (!s.ok()) return s;
  if (world_.rank == 0) {
    s = metrics_.open(cfg_.logging().run_dir(), cfg_.logging().jsonl(),
                      cfg_.logging().tensorboard(), /*append=*/false);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status Trainer::make_sources() {
  const int dp = std::max(1, cfg_.parallel().dp());
  const int dp_rank = (world_.rank / std::max(1, cfg_.parallel().tp())) % dp;
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
    Tensor x = b->inputs.to(device_), y = b->targets.to(device_);
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
  std::unique_ptr<BatchSource> val = make_val_();
  const int batches = cfg_.eval().has_batches() ? cfg_.eval().batches() : 20;
  const int64_t micro = cfg_.parallel().micro_batch_size();
  const int64_t seq = cfg_.data().seq_len();
  double total = 0;
  int n = 0;
  for (int i = 0; i < batches; ++i) {
    absl::StatusOr<Batch> b = val->next(micro, seq);
    if (!b.ok()) break;  // a small validation set ends early
    total += model_->loss(b->inputs.to(device_), b->targets.to(device_)).item();
    ++n;
  }
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
  std::vector<int64_t> ids = models::generate(*model_, prompt, so, sample_gen_);
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
                {"mem_peak_mib", mem.peak / 1048576.0}});
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
  do_eval(0);
  for (int64_t step = 0; step < max_steps; ++step) {
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
    if (step > 0) {  // the first step includes one-time setup (allocator, kernels)
      elapsed_ += dt;
      tokens_timed_ += tokens;
      ++steps_timed_;
    }
    sum.train_losses.push_back(loss);
    log_step(step, loss, lr, gnorm, tokens, dt);
    ++sum.steps;
    const bool last = step + 1 == max_steps || (budget > 0 && tokens_seen_ >= budget);
    if (eval_every > 0 && (step + 1) % eval_every == 0 && !last) do_eval(step + 1);
    if (sample_every > 0 && (step + 1) % sample_every == 0 && !last) {
      std::string s = sample(step + 1);
      if (!quiet_ && world_.rank == 0) std::printf("sample: %s\n", s.c_str());
    }
    metrics_.flush();
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

}  // namespace kiln::launch
