// The Trainer's reporting: the progress line and "train" / "val" metrics records of every step, and
// the lines that open and close a run.
#include "launch/trainer_log.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "launch/trainer.h"

#if KILN_WITH_CUDA
namespace kiln::cuda {
std::string device_name(int index);  // core/cuda/runtime.cc (declared here: no CUDA headers)
}  // namespace kiln::cuda
#endif

namespace kiln::launch {
namespace {

// Dense bf16 tensor-core peaks from NVIDIA's data sheets (no sparsity), matched by substring of the
// CUDA device name, most specific first.
struct GpuPeak {
  const char* name;
  double flops;
};
constexpr GpuPeak kGpuPeaks[] = {
    {"H100 PCIe", 756e12}, {"H100 NVL", 835e12}, {"H100", 989e12},  {"H200", 989e12},
    {"GH200", 989e12},     {"H800", 989e12},     {"B200", 2250e12}, {"B100", 1750e12},
    {"A100", 312e12},      {"A800", 312e12},     {"A10G", 70e12},   {"A10", 125e12},
    {"L40S", 362e12},      {"L40", 181e12},      {"L4", 121e12},    {"A6000", 155e12},
    {"V100", 125e12},  // fp16: V100 has no bf16
};

}  // namespace

double peak_dense_bf16_flops(std::string_view gpu_name) {
  for (const GpuPeak& p : kGpuPeaks)
    if (gpu_name.find(p.name) != std::string_view::npos) return p.flops;
  return 0;
}

double mfu_peak_flops(double config_peak, bool gpu, std::string_view gpu_name) {
  if (config_peak > 0) return config_peak;
  if (!gpu) return 0;
  if (const char* e = std::getenv("KILN_PEAK_FLOPS"); e && *e) {
    const double v = std::strtod(e, nullptr);
    if (v > 0) return v;
  }
  return peak_dense_bf16_flops(gpu_name);
}

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

void Trainer::print_start() {
  std::string gpu;
#if KILN_WITH_CUDA
  if (device_.is_cuda()) gpu = cuda::device_name(device_.index);
#endif
  peak_flops_ = mfu_peak_flops(cfg_.logging().peak_flops(), device_.is_cuda(), gpu);
  if (world_.rank != 0 || quiet_) return;
  int64_t num_params = 0;  // this rank's (its pipeline stage's chunks under pp)
  for (const models::LanguageModel* c : chunk_ptrs()) num_params += c->num_parameters();
  if (peak_flops_ > 0)
    std::printf(
        "kiln: MFU against %.0f TFLOP/s per %s (logging.peak_flops or KILN_PEAK_FLOPS to "
        "change)\n",
        peak_flops_ / 1e12, gpu.empty() ? "device" : gpu.c_str());
  else if (device_.is_cuda())
    std::printf("kiln: MFU n/a: no peak FLOP/s known for %s (set logging.peak_flops)\n",
                gpu.c_str());
  std::printf("kiln: %s, %s params, %s, device %s, %s compute\n",
              cfg_.model().preset().empty() ? "custom model" : cfg_.model().preset().c_str(),
              human_count(static_cast<double>(num_params)).c_str(),
              cfg_.data().synthetic() ? "synthetic data" : "token shards", device_.str().c_str(),
              dtype_name(compute_));
}

void Trainer::print_end(const TrainSummary& sum) const {
  if (quiet_ || world_.rank != 0) return;
  std::printf("sample after %lld steps:\n%s\n", static_cast<long long>(sum.steps),
              sum.sample.c_str());
  const long long first = sum.first_step, last = sum.steps;
  const std::string tokens = human_count(static_cast<double>(tokens_seen_));
  if (first > 0 && first == last)  // a finished run started again: only the final eval ran
    std::printf(
        "kiln: nothing to train: the checkpoint is at step %lld, where the run ends "
        "(training.max_steps or training.token_budget; raise it to train on)\n",
        last);
  else if (first > 0)
    std::printf("kiln: trained steps %lld-%lld (resumed at step %lld; %s tokens in all) in %s\n",
                first + 1, last, first, tokens.c_str(), human_time(sum.seconds).c_str());
  else
    std::printf("kiln: trained %lld steps, %s tokens in %s\n", last, tokens.c_str(),
                human_time(sum.seconds).c_str());
}

void Trainer::evaluate_and_log(int64_t step, TrainSummary* sum) {
  const double v = evaluate();
  if (std::isnan(v)) return;
  sum->val_losses.emplace_back(step, v);
  metrics_.log("val", step,
               {{"loss", v},
                {"tokens", static_cast<double>(tokens_seen_)},
                {"elapsed_s", now_s() - t_start_},
                {"train_s", train_time_}});
  if (!quiet_ && world_.rank == 0)
    std::printf("eval  step %lld | val loss %.4f\n", static_cast<long long>(step), v);
}

void Trainer::log_step(int64_t step, double loss, double lr, double gnorm, int64_t tokens,
                       double dt) {
  const int64_t max_steps = cfg_.training().max_steps();
  const double tok_s = tokens / std::max(dt, 1e-9);
  const double peak = peak_flops_;
  const double gpus = mesh_->dims().world_size();
  const double mfu = peak > 0 ? tok_s * flops_per_token_full_ / (gpus * peak) : NAN;
  const MemoryStats mem = memory_stats(device_);
  const double eta = by_tokens_
                         ? elapsed_ / std::max<int64_t>(tokens_timed_, 1) *
                               static_cast<double>(cfg_.training().token_budget() - tokens_seen_)
                         : elapsed_ / std::max<int64_t>(steps_timed_, 1) * (max_steps - step - 1);
  metrics_.log("train", step + 1,  // steps completed, as the console counts
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
  const int every = cfg_.logging().log_every();
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

void Trainer::log_skip(int64_t step, double loss, double gnorm) {
  const double scale = scaler_ ? scaler_->scale() : NAN;
  metrics_.log("skip", step,
               {{"non_finite", health_.non_finite ? 1.0 : 0.0},
                {"overflow", health_.overflow ? 1.0 : 0.0},
                {"loss", loss},
                {"grad_norm", gnorm},
                {"in_a_row", static_cast<double>(non_finite_run_)},
                {"loss_scale", scale}});
  if (world_.rank != 0) return;
  if (health_.overflow) {
    std::fprintf(stderr,
                 "kiln: step %lld: fp16 gradient overflow: step skipped, loss scale now %g "
                 "(%lld skipped so far)\n",
                 static_cast<long long>(step + 1), scale,
                 static_cast<long long>(scaler_->skipped()));
  } else {
    std::fprintf(stderr,
                 "kiln: warning: step %lld: loss %g, gradient norm %g (on some rank): not finite; "
                 "step skipped, weights and optimizer state unchanged (%lld in a row; the run "
                 "stops at training.max_non_finite_steps = %d)\n",
                 static_cast<long long>(step + 1), loss, gnorm,
                 static_cast<long long>(non_finite_run_), cfg_.training().max_non_finite_steps());
  }
  std::fflush(stderr);
}

void Trainer::stop_non_finite(TrainSummary* sum) {
  sum->non_finite_stop = true;
  sum->steps = step_;
  sum->tokens = tokens_seen_;
  absl::Status m = metrics_.flush();
  if (world_.rank != 0) return;
  if (!m.ok()) std::fprintf(stderr, "kiln: %s\n", std::string(m.message()).c_str());
  std::fprintf(stderr,
               "kiln: stopping after step %lld: %lld steps in a row had a non-finite loss or "
               "gradient norm (training.max_non_finite_steps = %d); nothing was saved, the last "
               "checkpoint (if any) holds the last finite state. Lower optimizer.lr, set "
               "optimizer.grad_clip, or check the data.\n",
               static_cast<long long>(step_), static_cast<long long>(non_finite_run_),
               cfg_.training().max_non_finite_steps());
  std::fflush(stderr);
}

}  // namespace kiln::launch
