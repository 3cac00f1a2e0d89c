// The Trainer's checkpoints (launch/checkpoint.h writes and reads the files): what this rank
// stores (its pieces of the parameters and optimizer state, RNG and loader state), the manifest
// header, and restoring all training state from a checkpoint of any layout.
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/autograd.h"
#include "core/ops/elementwise.h"
#include "launch/checkpoint.h"
#include "launch/trainer.h"
#include "launch/trainer_log.h"

#ifndef KILN_GIT_COMMIT
#define KILN_GIT_COMMIT "unknown"
#endif

namespace kiln::launch {
namespace {

// FailedPrecondition naming the first piece holding a NaN or Inf (an f64 sum of f32 squares is
// finite exactly when every element is).
absl::Status check_finite(const std::vector<parallel::Piece>& pieces, int64_t step) {
  for (const parallel::Piece& p : pieces)
    if (p.local.defined() && p.local.numel() > 0 && !std::isfinite(sum_squares(p.local)))
      return absl::FailedPreconditionError(absl::StrFormat(
          "refusing to save the checkpoint of step %d: tensor '%s' holds NaN or Inf values "
          "(the earlier checkpoints are kept)",
          step, p.name));
  return absl::OkStatus();
}

}  // namespace

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

absl::Status Trainer::lock_run_folder() {
  absl::Status mine;
  if (world_.rank == 0) {
    absl::StatusOr<RunLock> l = RunLock::acquire(cfg_.logging().run_dir());
    if (l.ok()) lock_ = std::make_unique<RunLock>(std::move(*l));
    mine = l.status();
  }
  absl::Status s = agree_across_ranks(mesh_->world(), mine, "locking the run folder");
  if (!s.ok()) return s;
  // Every rank writes its shard there: an unwritable directory is found now, not at the first save.
  const CheckpointConfig& k = cfg_.checkpoint();
  if (k.every_n_steps() > 0 || k.save_at_end() || k.save_on_signal())
    mine = probe_writable(k.dir(), "checkpoint.dir");
  return agree_across_ranks(mesh_->world(), mine, "checking checkpoint.dir");
}

// Tensor-parallel shards are not yet written as boxes of the whole tensors: refused rather than
// written under the whole tensors' names (which would be wrong pieces).
absl::Status Trainer::check_checkpoint_layout(const char* what) const {
  if (mesh_->dims().tp == 1) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(
      "checkpoint: ", what, " a tensor-parallel run (parallel.tp = ", mesh_->dims().tp,
      ") is not built yet; set checkpoint.every_n_steps = 0, checkpoint.save_at_end = false, "
      "checkpoint.save_on_signal = false and checkpoint.resume = \"never\" for tp > 1"));
}

absl::StatusOr<std::string> Trainer::save_checkpoint() {
  if (absl::Status s = check_checkpoint_layout("saving"); !s.ok()) return s;
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
  l->set_dp(mesh_->dims().dp);
  l->set_tp(mesh_->dims().tp);
  l->set_pp(mesh_->dims().pp);
  l->set_zero_stage(dp_->zero_stage());
  l->set_virtual_stages(cfg_.parallel().virtual_stages());
  RankContribution mine;
  const int dp_rank = mesh_->dp_rank();
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
  // A non-finite state is never saved (retention would then delete the last good checkpoints).
  absl::Status finite = agree_across_ranks(mesh_->world(), check_finite(mine.pieces, step_),
                                           "the non-finite check before saving");
  if (!finite.ok()) return finite;
  absl::StatusOr<std::string> path =
      launch::save_checkpoint(cfg_.checkpoint().dir(), h, mine, mesh_->world());
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
  if (absl::Status s = check_checkpoint_layout("loading into"); !s.ok()) return s;
  // The model check first: a manifest from another model is reported as such, not as its files.
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(path, /*check_files=*/false);
  if (!m.ok()) return m.status();
  absl::Status s = check_model_matches(*m, cfg_.model(), model_->parameters(), path,
                                       /*stage=*/mesh_->dims().pp > 1);
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
    if (!pos || ls.rank() == mesh_->dp_rank()) pos = &ls;
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
    if (l.world_size() != world_.size || l.dp() != mesh_->dims().dp ||
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

}  // namespace kiln::launch
