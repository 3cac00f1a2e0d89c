// Resolution of a TrainConfig: the model preset and every default that the rest of kiln reads
// (the one place defaults live; consumers read resolved fields and never repeat a default), then
// the world-dependent fields (dp, micro-batch size).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "launch/config.h"
#include "models/presets.h"

namespace kiln {
namespace {

void resolve_data_and_parallel(TrainConfig* cfg) {
  TrainingConfig* t = cfg->mutable_training();
  if (!t->has_seed()) t->set_seed(1337);
  if (!t->has_max_non_finite_steps()) t->set_max_non_finite_steps(5);

  DataConfig* d = cfg->mutable_data();
  if (!d->has_seq_len()) d->set_seq_len(cfg->model().max_seq_len());
  if (!d->has_seed()) d->set_seed(t->seed());
  if (!d->has_shuffle()) d->set_shuffle(true);
  if (!d->has_verify_checksums()) d->set_verify_checksums(true);
  if (!d->has_prefetch()) d->set_prefetch(2);

  ParallelConfig* p = cfg->mutable_parallel();
  if (!p->has_zero_stage()) p->set_zero_stage(0);
  if (!p->has_tp()) p->set_tp(1);
  if (!p->has_pp()) p->set_pp(1);
  if (!p->has_virtual_stages()) p->set_virtual_stages(1);
  if (!p->has_pipeline_schedule()) p->set_pipeline_schedule(ParallelConfig::ONE_F_ONE_B);
  if (!p->has_backend()) p->set_backend(ParallelConfig::BACKEND_AUTO);
  if (!p->has_bucket_mb()) p->set_bucket_mb(25.0);
  if (!p->has_overlap_comm()) p->set_overlap_comm(true);
  if (!p->has_timeout_s()) p->set_timeout_s(300);
  if (p->has_dp() && p->dp() > 0 && !p->has_micro_batch_size() && t->global_batch_size() > 0 &&
      t->global_batch_size() % p->dp() == 0) {
    p->set_micro_batch_size(t->global_batch_size() / p->dp());
  }
}

void resolve_optimizer_and_schedules(TrainConfig* cfg) {
  OptimizerConfig* o = cfg->mutable_optimizer();
  if (!o->has_type()) o->set_type(OptimizerConfig::ADAMW);
  if (!o->has_lr()) o->set_lr(6e-4);
  if (!o->has_beta1()) o->set_beta1(0.9);
  if (!o->has_beta2()) o->set_beta2(0.95);
  if (!o->has_eps()) o->set_eps(1e-8);
  if (!o->has_weight_decay()) o->set_weight_decay(0.1);
  if (!o->has_momentum()) o->set_momentum(0.9);
  if (!o->has_grad_clip()) o->set_grad_clip(1.0);
  if (!o->has_decay_min_dim()) o->set_decay_min_dim(2);

  LrSchedule* lr = cfg->mutable_schedule()->mutable_lr();
  if (!lr->has_kind()) lr->set_kind(LrSchedule::COSINE);
  if (!lr->has_decay_fraction()) lr->set_decay_fraction(0.2);
  if (!lr->has_min_lr_ratio()) lr->set_min_lr_ratio(0.1);
  SeqLenCurriculum* sl = cfg->mutable_schedule()->mutable_seq_len();
  if (!sl->has_kind()) sl->set_kind(SeqLenCurriculum::NONE);
  if (sl->kind() != SeqLenCurriculum::NONE) {
    if (!sl->has_root_degree()) sl->set_root_degree(2);
    if (!sl->has_step_multiple()) sl->set_step_multiple(8);
    if (sl->max_len() == 0) sl->set_max_len(cfg->data().seq_len());
  }
}

void resolve_precision(TrainConfig* cfg) {
  PrecisionConfig* pr = cfg->mutable_precision();
  if (!pr->has_dtype()) pr->set_dtype(PrecisionConfig::AUTO);
  if (pr->dtype() == PrecisionConfig::FP16) {
    if (!pr->has_loss_scale_init()) pr->set_loss_scale_init(65536.0);
    if (!pr->has_loss_scale_growth()) pr->set_loss_scale_growth(2.0);
    if (!pr->has_loss_scale_backoff()) pr->set_loss_scale_backoff(0.5);
    if (!pr->has_loss_scale_growth_interval()) pr->set_loss_scale_growth_interval(2000);
  }
  if (!cfg->mutable_recompute()->has_policy()) {
    cfg->mutable_recompute()->set_policy(RecomputeConfig::NONE);
  }
}

// logging, checkpoint and eval: where a run writes and what it reports.
void resolve_outputs(TrainConfig* cfg) {
  LoggingConfig* l = cfg->mutable_logging();
  if (l->run_dir().empty()) l->set_run_dir("runs/" + cfg->name());
  if (!l->has_log_every()) l->set_log_every(1);
  if (!l->has_jsonl()) l->set_jsonl(true);
  if (!l->has_tensorboard()) l->set_tensorboard(true);

  CheckpointConfig* k = cfg->mutable_checkpoint();
  if (k->dir().empty()) k->set_dir(l->run_dir() + "/checkpoints");
  if (!k->has_keep_last()) k->set_keep_last(3);
  if (k->resume().empty()) k->set_resume("auto");
  if (!k->has_save_on_signal()) k->set_save_on_signal(true);
  if (!k->has_save_at_end()) k->set_save_at_end(true);

  EvalConfig* e = cfg->mutable_eval();
  if (!e->has_batches()) e->set_batches(20);
  if (!e->has_sample_tokens()) e->set_sample_tokens(64);
  if (!e->has_sample_temperature()) e->set_sample_temperature(1.0);
}

}  // namespace

absl::Status resolve_config(TrainConfig* cfg) {
  if (cfg->name().empty()) cfg->set_name("default");
  if (!cfg->has_device()) cfg->set_device(TrainConfig::AUTO);
  absl::Status model = resolve_model_config(cfg->mutable_model());
  if (!model.ok()) return model;
  resolve_data_and_parallel(cfg);
  resolve_optimizer_and_schedules(cfg);
  resolve_precision(cfg);
  resolve_outputs(cfg);
  return absl::OkStatus();
}

absl::Status resolve_world(int world_size, TrainConfig* cfg) {
  absl::Status s = validate_world(*cfg, world_size);
  if (!s.ok()) return s;
  ParallelConfig* p = cfg->mutable_parallel();
  if (p->dp() <= 0) p->set_dp(world_size / (p->tp() * p->pp()));
  if (!p->has_micro_batch_size()) {
    p->set_micro_batch_size(cfg->training().global_batch_size() / p->dp());
  }
  return absl::OkStatus();
}

int64_t grad_accumulation_steps(const TrainConfig& cfg) {
  const int64_t unit =
      static_cast<int64_t>(cfg.parallel().micro_batch_size()) * std::max(cfg.parallel().dp(), 1);
  return unit > 0 ? cfg.training().global_batch_size() / unit : 0;
}

}  // namespace kiln
