// The Trainer's checkpoints (launch/checkpoint.h writes and reads the files): what this rank
// stores (its pieces of the parameters and optimizer state, RNG and loader state), the manifest
// header, and restoring all training state from a checkpoint of any layout.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/autograd.h"
#include "core/nn/fp8_histories.h"
#include "core/ops/elementwise.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_tp.h"
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

// The RNG state's name of pipeline chunk c's dropout generator ("dropout" for the first).
std::string dropout_generator_name(size_t c) {
  return c == 0 ? "dropout" : absl::StrCat("dropout.chunk", c);
}

// Chunk c's fp8 history records as this rank's checkpoint entries ("<c>/<module>/<role>").
void add_fp8_histories(nn::Module& chunk, size_t c, int rank, std::vector<Fp8HistoryState>* out) {
  for (const nn::Fp8HistoryRecord& r : nn::fp8_history_records(chunk)) {
    Fp8HistoryState& f = out->emplace_back();
    f.set_rank(rank);
    f.set_name(absl::StrCat(c, "/", r.name));
    for (float v : r.slots) f.add_slots(v);
    f.set_uses(r.uses);
  }
}

// This rank's stored histories, split by model chunk (the "<c>/" prefix removed).
absl::StatusOr<std::vector<std::vector<nn::Fp8HistoryRecord>>> fp8_records_by_chunk(
    const Manifest& m, int rank, size_t chunks) {
  std::vector<std::vector<nn::Fp8HistoryRecord>> out(chunks);
  for (const Fp8HistoryState& f : m.fp8()) {
    if (f.rank() != rank) continue;
    const size_t slash = f.name().find('/');
    size_t c = chunks;
    if (slash != std::string::npos && slash > 0 && slash < 10 &&
        f.name().find_first_not_of("0123456789") == slash)
      c = std::stoul(f.name().substr(0, slash));
    if (c >= chunks)
      return absl::InvalidArgumentError(absl::StrCat(
          "fp8 history '", f.name(), "' names no model chunk of this run (", chunks, " chunks)"));
    out[c].push_back({f.name().substr(slash + 1),
                      std::vector<float>(f.slots().begin(), f.slots().end()), f.uses()});
  }
  return out;
}

// FailedPrecondition when the checkpoint's optimizer type differs from `here`'s.
absl::Status check_same_optimizer(const Manifest& m, const OptimizerConfig& here,
                                  const std::string& path) {
  const OptimizerConfig& stored = m.config().optimizer();
  if (stored.type() == here.type()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("checkpoint ", path, ": optimizer.type is ",
                   OptimizerConfig::Type_Name(stored.type()), " there and ",
                   OptimizerConfig::Type_Name(here.type()), " here (its state cannot carry over)"));
}

// Puts this rank's stored fp8 histories back into its model chunks.
absl::Status restore_fp8_state(const Manifest& m, int rank,
                               const std::vector<std::unique_ptr<models::LanguageModel>>& chunks) {
  auto by_chunk = fp8_records_by_chunk(m, rank, chunks.size());
  absl::Status s = by_chunk.status();
  for (size_t c = 0; s.ok() && c < chunks.size(); ++c)
    s = nn::restore_fp8_histories(*chunks[c], (*by_chunk)[c]);
  return s;
}

// Whether the checkpoint's layout gives every rank the same place (and so the same data).
bool same_ranks(const ParallelLayout& l, int world_size, const parallel::ParallelDims& d,
                size_t chunks) {
  return l.world_size() == world_size && l.dp() == d.dp && l.tp() == d.tp &&
         std::max(l.pp(), 1) == d.pp && std::max(l.virtual_stages(), 1) == static_cast<int>(chunks);
}

}  // namespace

std::vector<parallel::Piece> Trainer::checkpoint_pieces(bool for_load) {
  // Global pieces (launch/checkpoint_tp.h): tensor-parallel shards become boxes of the full
  // tensors, so the checkpoint loads into any tp x dp layout.
  const parallel::TpPlan plan = model_tp_plan();
  const TpCoords tp{&plan, mesh_->dims().tp, mesh_->tp_rank()};
  if (for_load) return checkpoint_pieces_to_load(*dp_, model_parameters(), tp);
  return checkpoint_pieces_to_save(*dp_, mesh_->dp_rank(), tp);
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

absl::StatusOr<std::string> Trainer::save_checkpoint() {
  const double t0 = now_s();
  join_optimizer();  // parameters and moments as the last step left them
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
  l->set_virtual_stages(static_cast<int32_t>(chunks_.size()));  // model chunks per stage
  RankContribution mine;
  const int dp_rank = mesh_->dp_rank();
  mine.pieces = checkpoint_pieces(false);  // every element from exactly one rank
  std::vector<std::pair<std::string, GeneratorState>> gens{{"sample", sample_gen_.state()}};
  for (size_t c = 0; c < chunks_.size(); ++c)
    gens.emplace_back(dropout_generator_name(c), chunks_[c]->dropout_generator().state());
  for (const auto& [name, st] : gens) {
    RngState* r = &mine.rng.emplace_back();
    r->set_rank(world_.rank);
    r->set_generator(name);
    r->set_state(encode_generator_state(st.seed, st.offset));
  }
  if (mesh_->tp_rank() == 0) {  // the tp ranks of a dp rank read the same batches
    LoaderState& ls = mine.loader.emplace_back();
    ls.set_rank(dp_rank);
    ls.set_position(train_->position());
  }
  for (size_t c = 0; c < chunks_.size(); ++c)
    add_fp8_histories(*chunks_[c], c, world_.rank, &mine.fp8);
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
  join_optimizer();  // no step may still write what is restored
  // The model check first: a manifest from another model is reported as such, not as its files.
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(path, /*check_files=*/false);
  if (!m.ok()) return m.status();
  const parallel::TpPlan plan = model_tp_plan();
  const TpCoords tp{&plan, mesh_->dims().tp, mesh_->tp_rank()};
  absl::Status s =
      check_model_shapes(*m, cfg_.model(), tp_global_shapes(tp, model_parameters()), path,
                         /*stage=*/mesh_->dims().pp > 1);
  if (s.ok()) s = check_checkpoint_files(path, *m);
  if (s.ok()) s = check_same_optimizer(*m, cfg_.optimizer(), path);
  if (!s.ok()) return s;
  if (world_.rank == 0)
    for (const std::string& d : model_field_differences(m->config().model(), cfg_.model(), false))
      std::fprintf(stderr, "kiln: warning: checkpoint %s: %s\n", path.c_str(), d.c_str());
  s = read_checkpoint_pieces(path, *m, checkpoint_pieces(true));
  if (!s.ok()) return s;
  if (precast_cache_) precast_cache_->set_current(false);  // the parameters changed
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
    for (size_t c = 0; c < chunks_.size(); ++c)
      if (r.generator() == dropout_generator_name(c))
        chunks_[c]->dropout_generator().set_state({seed, offset});
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
  const ParallelLayout& l = m->layout();
  const int v = std::max(l.virtual_stages(), 1);
  const bool same = same_ranks(l, world_.size, mesh_->dims(), chunks_.size());
  // fp8 histories follow the data a rank sees: only the same layout restores them.
  if (s = same ? restore_fp8_state(*m, world_.rank, chunks_) : absl::OkStatus(); !s.ok())
    return absl::Status(s.code(), absl::StrCat("checkpoint ", path, ": ", s.message()));
  resumed_from_ = path;
  // A checkpoint of this run's own directory needs no save at the end when no step remains; one
  // from elsewhere (kiln train --resume=PATH into another layout) is saved here by save_at_end.
  std::error_code ec;
  saved_step_ = std::filesystem::equivalent(std::filesystem::path(path).parent_path(),
                                            cfg_.checkpoint().dir(), ec)
                    ? step_
                    : -1;
  if (world_.rank == 0) {
    std::string layout;
    if (!same || l.zero_stage() != dp_->zero_stage())
      layout = absl::StrFormat(", resharded from world %d dp %d zero_stage %d%s%s%s",
                               l.world_size(), l.dp(), l.zero_stage(),
                               l.tp() > 1 ? absl::StrFormat(" tp %d", l.tp()) : "",
                               l.pp() > 1 ? absl::StrFormat(" pp %d", l.pp()) : "",
                               v > 1 ? absl::StrFormat(" v %d", v) : "");
    std::printf("kiln: resumed from %s (step %lld, %lld tokens%s)\n", path.c_str(),
                static_cast<long long>(step_), static_cast<long long>(tokens_seen_),
                layout.c_str());
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

}  // namespace kiln::launch
