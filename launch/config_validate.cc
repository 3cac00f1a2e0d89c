// Validation of a resolved TrainConfig: every inconsistent or out-of-range value reported as
// "FIELD: reason", one per line; validate_world adds what needs the world size.
#include <glob.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "launch/config.h"

namespace kiln {
namespace {

constexpr int kMaxSeqLen = 1 << 20;  // model.max_seq_len bound (about a million tokens)

bool glob_matches(const std::string& pattern) {
  glob_t g;
  const int rc = glob(pattern.c_str(), 0, nullptr, &g);
  const bool any = rc == 0 && g.gl_pathc > 0;
  globfree(&g);
  return any;
}

class Checker {
 public:
  // Adds "field: reason" when `ok` is false.
  void require(bool ok, const std::string& field, const std::string& reason) {
    if (!ok) errors_.push_back(absl::StrCat(field, ": ", reason));
  }
  absl::Status status() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
  }

 private:
  std::vector<std::string> errors_;
};

std::string num(double v) { return absl::StrCat(v); }

void check_model(const ModelConfig& m, Checker& c) {
  c.require(m.family() != ModelConfig::FAMILY_UNSPECIFIED, "model.family",
            "not set (set model.preset or model.family)");
  c.require(m.n_layer() > 0, "model.n_layer", "must be > 0, got " + num(m.n_layer()));
  c.require(m.n_head() > 0, "model.n_head", "must be > 0, got " + num(m.n_head()));
  c.require(m.n_kv_head() > 0, "model.n_kv_head", "must be > 0, got " + num(m.n_kv_head()));
  c.require(m.d_model() > 0, "model.d_model", "must be > 0, got " + num(m.d_model()));
  c.require(m.d_ff() > 0, "model.d_ff", "must be > 0, got " + num(m.d_ff()));
  c.require(m.vocab_size() > 0, "model.vocab_size", "must be > 0, got " + num(m.vocab_size()));
  c.require(m.max_seq_len() > 0, "model.max_seq_len", "must be > 0, got " + num(m.max_seq_len()));
  // A position table or rotary cache of max_seq_len rows, and attention over that many tokens:
  // beyond 2^20 it is a typo, refused here rather than in the allocator.
  c.require(m.max_seq_len() <= kMaxSeqLen, "model.max_seq_len",
            absl::StrCat(m.max_seq_len(), " is over the ", kMaxSeqLen, " tokens kiln supports"));
  if (m.n_head() > 0 && m.d_model() > 0) {
    c.require(m.d_model() % m.n_head() == 0, "model.n_head",
              absl::StrCat("n_head (", m.n_head(), ") must divide d_model (", m.d_model(), ")"));
  }
  if (m.n_head() > 0 && m.n_kv_head() > 0) {
    c.require(
        m.n_head() % m.n_kv_head() == 0, "model.n_kv_head",
        absl::StrCat("n_kv_head (", m.n_kv_head(), ") must divide n_head (", m.n_head(), ")"));
  }
  if (m.family() == ModelConfig::GPT2) {
    c.require(m.n_kv_head() == m.n_head(), "model.n_kv_head",
              absl::StrCat("GPT2 uses multi-head attention: n_kv_head (", m.n_kv_head(),
                           ") must equal n_head (", m.n_head(), ")"));
  }
  if (m.family() == ModelConfig::LLAMA) {
    c.require(m.rope_theta() > 0, "model.rope_theta", "must be > 0, got " + num(m.rope_theta()));
    if (m.n_head() > 0 && m.d_model() % m.n_head() == 0) {
      c.require((m.d_model() / m.n_head()) % 2 == 0, "model.d_model",
                absl::StrCat("head size d_model / n_head = ", m.d_model() / m.n_head(),
                             " must be even for rotary embeddings"));
    }
  }
  c.require(m.norm_eps() > 0, "model.norm_eps", "must be > 0, got " + num(m.norm_eps()));
  c.require(m.dropout() >= 0 && m.dropout() < 1, "model.dropout",
            "must be in [0, 1), got " + num(m.dropout()));
  c.require(m.init_std() > 0, "model.init_std", "must be > 0, got " + num(m.init_std()));
  c.require(m.vocab_pad_multiple() >= 1, "model.vocab_pad_multiple",
            "must be >= 1, got " + num(m.vocab_pad_multiple()));
}

void check_data(const TrainConfig& cfg, Checker& c) {
  const DataConfig& d = cfg.data();
  if (!d.synthetic()) {
    c.require(d.train_shards_size() > 0, "data.train_shards",
              "no training data given (set a glob of token shards, or data.synthetic: true)");
    for (const std::string& g : d.train_shards()) {
      c.require(glob_matches(g), "data.train_shards",
                "no file matches '" + g + "' (run `kiln prepare-data` first?)");
    }
    for (const std::string& g : d.val_shards()) {
      c.require(glob_matches(g), "data.val_shards", "no file matches '" + g + "'");
    }
    if (!d.tokenizer_dir().empty()) {
      c.require(std::filesystem::is_directory(d.tokenizer_dir()), "data.tokenizer_dir",
                "'" + d.tokenizer_dir() + "' is not a directory");
    }
  }
  c.require(d.seq_len() > 0, "data.seq_len", "must be > 0, got " + num(d.seq_len()));
  c.require(d.seq_len() <= cfg.model().max_seq_len(), "data.seq_len",
            absl::StrCat("seq_len (", d.seq_len(), ") exceeds model.max_seq_len (",
                         cfg.model().max_seq_len(), ")"));
  c.require(d.prefetch() >= 0, "data.prefetch", "must be >= 0, got " + num(d.prefetch()));
}

// Batch divisibility for a data-parallel size `dp` (dp_known false: only what holds for any dp).
void check_batches(const TrainConfig& cfg, int dp, bool dp_known, Checker& c) {
  const ParallelConfig& p = cfg.parallel();
  const int64_t global = cfg.training().global_batch_size();
  if (global <= 0 || dp <= 0) return;
  const std::string dp_text = dp_known ? absl::StrCat(" * dp (", dp, ")") : "";
  int64_t unit = dp;  // sequences per micro-step over all ranks
  std::string unit_text = dp_known ? absl::StrCat("dp (", dp, ")") : "";
  if (p.has_micro_batch_size()) {
    if (p.micro_batch_size() <= 0) return;  // reported by check_parallel
    unit = static_cast<int64_t>(p.micro_batch_size()) * dp;
    unit_text = absl::StrCat("parallel.micro_batch_size (", p.micro_batch_size(), ")", dp_text,
                             dp_known ? absl::StrCat(" = ", unit) : "");
  }
  if (unit_text.empty()) return;
  c.require(global % unit == 0, "training.global_batch_size",
            absl::StrCat("global batch ", global, " is not divisible by ", unit_text));
  const BatchRamp& ramp = cfg.schedule().batch_ramp();
  if (ramp.start() > 0) {
    c.require(ramp.start() % unit == 0, "schedule.batch_ramp.start",
              absl::StrCat("start ", ramp.start(), " is not divisible by ", unit_text));
    if (ramp.increment() > 0) {
      c.require(ramp.increment() % unit == 0, "schedule.batch_ramp.increment",
                absl::StrCat("increment ", ramp.increment(), " is not divisible by ", unit_text));
    }
  }
  if (global % unit != 0 || !p.has_micro_batch_size()) return;
  const int64_t accum = global / unit;
  if (p.pp() > 1 && p.pipeline_micro_batches() > 0) {
    c.require(accum % p.pipeline_micro_batches() == 0, "parallel.pipeline_micro_batches",
              absl::StrCat(p.pipeline_micro_batches(), " does not divide the ", accum,
                           " micro-batches of an optimizer step"));
  }
  if (p.pp() > 1 && p.pipeline_schedule() == ParallelConfig::INTERLEAVED_1F1B) {
    const int64_t per_flush = p.pipeline_micro_batches() > 0 ? p.pipeline_micro_batches() : accum;
    c.require(per_flush % p.pp() == 0, "parallel.pipeline_micro_batches",
              absl::StrCat("INTERLEAVED_1F1B needs the micro-batches per flush (", per_flush,
                           ") to be a multiple of pp (", p.pp(), ")"));
  }
  if (p.pp() > 1 && p.pipeline_schedule() != ParallelConfig::GPIPE) {
    const int64_t per_flush = p.pipeline_micro_batches() > 0 ? p.pipeline_micro_batches() : accum;
    c.require(per_flush >= p.pp(), "parallel.pipeline_micro_batches",
              absl::StrCat(ParallelConfig::PipelineSchedule_Name(p.pipeline_schedule()),
                           " needs at least pp (", p.pp(), ") micro-batches per flush, got ",
                           per_flush, " (global_batch_size / (micro_batch_size * dp))"));
  }
}

// parallel.pipeline_layers: one entry per model chunk (virtual stage), each >= 1, summing to
// n_layer.
void check_pipeline_layers(const ParallelConfig& p, int chunks, int64_t n_layer, Checker& c) {
  const auto& l = p.pipeline_layers();
  c.require(
      l.size() == chunks, "parallel.pipeline_layers",
      absl::StrCat("needs one entry per model chunk: pp (", p.pp(), ")",
                   chunks > p.pp() ? absl::StrCat(" * virtual_stages (", chunks / p.pp(), ")") : "",
                   " = ", chunks, ", got ", l.size()));
  int64_t sum = 0;
  for (int i = 0; i < l.size(); ++i) {
    c.require(
        l[i] >= 1, "parallel.pipeline_layers",
        absl::StrCat("entry ", i, " is ", l[i], "; every model chunk needs at least 1 layer"));
    sum += l[i];
  }
  c.require(sum == n_layer, "parallel.pipeline_layers",
            absl::StrCat("the entries sum to ", sum, ", not model.n_layer (", n_layer, ")"));
}

// How the layers split into model chunks: evenly, by parameters or as parallel.pipeline_layers.
void check_pipeline_split(const ModelConfig& m, const ParallelConfig& p, Checker& c) {
  const bool interleaved = p.pipeline_schedule() == ParallelConfig::INTERLEAVED_1F1B;
  const int chunks = p.pp() * (interleaved ? p.virtual_stages() : 1);
  const bool by_params = p.pipeline_split() == ParallelConfig::SPLIT_BY_PARAMETERS;
  c.require(!by_params || p.pipeline_layers().empty(), "parallel.pipeline_split",
            "SPLIT_BY_PARAMETERS computes the layers per chunk; parallel.pipeline_layers gives "
            "them: set one of the two");
  if (by_params) {
    c.require(
        m.n_layer() >= chunks, "parallel.pp",
        absl::StrCat(chunks, " model chunks (pp ", p.pp(), interleaved ? " * virtual_stages" : "",
                     ") need at least as many layers; model.n_layer is ", m.n_layer()));
  } else if (p.pipeline_layers().empty()) {
    c.require(m.n_layer() % chunks == 0, "parallel.pp",
              absl::StrCat(interleaved ? absl::StrCat("pp (", p.pp(), ") * virtual_stages (",
                                                      p.virtual_stages(), ")")
                                       : absl::StrCat("pp (", p.pp(), ")"),
                           " must divide model.n_layer (", m.n_layer(),
                           "), or give the layers per chunk in parallel.pipeline_layers, or set "
                           "parallel.pipeline_split to SPLIT_BY_PARAMETERS"));
  } else {
    check_pipeline_layers(p, chunks, m.n_layer(), c);
  }
  c.require(interleaved || p.virtual_stages() == 1, "parallel.virtual_stages",
            "only INTERLEAVED_1F1B uses virtual stages");
}

void check_parallel(const TrainConfig& cfg, Checker& c) {
  const ParallelConfig& p = cfg.parallel();
  const ModelConfig& m = cfg.model();
  c.require(p.dp() >= 0, "parallel.dp",
            "must be >= 0 (0 = from the world size), got " + num(p.dp()));
  c.require(p.tp() >= 1, "parallel.tp", "must be >= 1, got " + num(p.tp()));
  c.require(p.pp() >= 1, "parallel.pp", "must be >= 1, got " + num(p.pp()));
  c.require(p.zero_stage() >= 0 && p.zero_stage() <= 3, "parallel.zero_stage",
            "must be 0, 1, 2 or 3, got " + num(p.zero_stage()));
  if (p.has_micro_batch_size()) {
    c.require(p.micro_batch_size() > 0, "parallel.micro_batch_size",
              "must be > 0, got " + num(p.micro_batch_size()));
  }
  if (p.tp() > 1) {
    c.require(m.n_head() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.n_head (", m.n_head(), ")"));
    c.require(m.n_kv_head() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.n_kv_head (", m.n_kv_head(), ")"));
    c.require(m.d_ff() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.d_ff (", m.d_ff(), ")"));
    const int64_t pad = std::max(1, m.vocab_pad_multiple());
    const int64_t padded = (m.vocab_size() + pad - 1) / pad * pad;
    c.require(padded % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide the padded vocabulary (", padded,
                           " = model.vocab_size ", m.vocab_size(), " padded to a multiple of ",
                           "model.vocab_pad_multiple ", pad,
                           "; set vocab_pad_multiple to a multiple of tp, e.g. 64 or 128)"));
    if (p.sequence_parallel()) {
      const int64_t seq = cfg.data().seq_len();
      c.require(seq % p.tp() == 0, "parallel.sequence_parallel",
                absl::StrCat("tp (", p.tp(), ") must divide data.seq_len (", seq,
                             ") for sequence parallel"));
      c.require(!cfg.schedule().has_seq_len() ||
                    cfg.schedule().seq_len().kind() == SeqLenCurriculum::NONE,
                "parallel.sequence_parallel",
                "a sequence-length curriculum is not supported with sequence parallel");
      // A stage after the first never runs the embedding hook that puts its blocks on sequence
      // chunks, and the stages exchange (B, T, C) activations: refused rather than crashing.
      c.require(p.pp() <= 1, "parallel.sequence_parallel",
                absl::StrCat("not supported with pipeline parallel (pp ", p.pp(),
                             "); set it false or pp to 1"));
    }
  }
  c.require(p.virtual_stages() >= 1, "parallel.virtual_stages",
            "must be >= 1, got " + num(p.virtual_stages()));
  if (p.pp() >= 1 && p.virtual_stages() >= 1) check_pipeline_split(m, p, c);
  if (p.pp() > 1) {
    c.require(
        p.zero_stage() <= 1, "parallel.zero_stage",
        absl::StrCat("ZeRO-", p.zero_stage(),
                     " shards gradients, which pipeline parallelism (pp > 1) cannot; use 0 or 1"));
  }
  c.require(p.pipeline_micro_batches() >= 0, "parallel.pipeline_micro_batches",
            "must be >= 0, got " + num(p.pipeline_micro_batches()));
  c.require(p.bucket_mb() > 0, "parallel.bucket_mb", "must be > 0, got " + num(p.bucket_mb()));
  c.require(p.timeout_s() > 0, "parallel.timeout_s", "must be > 0, got " + num(p.timeout_s()));
  c.require(!(p.backend() == ParallelConfig::NCCL && cfg.device() == TrainConfig::CPU),
            "parallel.backend", "NCCL needs device CUDA (device is CPU); use MPI");
  check_batches(cfg, p.dp() > 0 ? p.dp() : 1, p.dp() > 0, c);
}

void check_optimizer(const OptimizerConfig& o, Checker& c) {
  c.require(std::isfinite(o.lr()) && o.lr() > 0, "optimizer.lr",
            "learning rate must be > 0, got " + num(o.lr()));
  c.require(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1",
            "must be in [0, 1), got " + num(o.beta1()));
  c.require(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2",
            "must be in [0, 1), got " + num(o.beta2()));
  c.require(o.eps() > 0, "optimizer.eps", "must be > 0, got " + num(o.eps()));
  c.require(o.weight_decay() >= 0, "optimizer.weight_decay",
            "must be >= 0, got " + num(o.weight_decay()));
  c.require(o.momentum() >= 0 && o.momentum() < 1, "optimizer.momentum",
            "must be in [0, 1), got " + num(o.momentum()));
  c.require(o.grad_clip() >= 0, "optimizer.grad_clip",
            "must be >= 0 (0 = no clipping), got " + num(o.grad_clip()));
  c.require(o.decay_min_dim() >= 0, "optimizer.decay_min_dim",
            "must be >= 0, got " + num(o.decay_min_dim()));
  for (const std::string& pattern : o.no_decay()) {
    c.require(!pattern.empty(), "optimizer.no_decay", "empty pattern");
  }
}

// The sequence-length curriculum (schedule.seq_len), when on.
void check_seq_len(const TrainConfig& cfg, Checker& c) {
  const SeqLenCurriculum& sl = cfg.schedule().seq_len();
  if (sl.kind() == SeqLenCurriculum::NONE) return;
  const int max_len = sl.max_len() > 0 ? sl.max_len() : cfg.data().seq_len();
  c.require(sl.min_len() > 0, "schedule.seq_len.min_len", "must be > 0, got " + num(sl.min_len()));
  c.require(sl.max_len() >= 0, "schedule.seq_len.max_len",
            "must be >= 0, got " + num(sl.max_len()));
  c.require(sl.min_len() <= max_len, "schedule.seq_len.min_len",
            absl::StrCat("min_len (", sl.min_len(), ") exceeds max_len (", max_len, ")"));
  c.require(
      max_len <= cfg.data().seq_len(), "schedule.seq_len.max_len",
      absl::StrCat("max_len (", max_len, ") exceeds data.seq_len (", cfg.data().seq_len(), ")"));
  c.require(sl.step_multiple() > 0, "schedule.seq_len.step_multiple",
            "must be > 0, got " + num(sl.step_multiple()));
  if (sl.step_multiple() > 0) {
    c.require(sl.min_len() >= sl.step_multiple(), "schedule.seq_len.min_len",
              absl::StrCat("min_len (", sl.min_len(), ") is below step_multiple (",
                           sl.step_multiple(), ")"));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_LINEAR || sl.kind() == SeqLenCurriculum::FIXED_ROOT) {
    c.require(sl.steps() > 0, "schedule.seq_len.steps", "must be > 0, got " + num(sl.steps()));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_ROOT) {
    c.require(sl.root_degree() >= 1, "schedule.seq_len.root_degree",
              "must be >= 1, got " + num(sl.root_degree()));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_DISCRETE) {
    const auto& lens = sl.discrete_lens();
    const auto& steps = sl.discrete_steps();
    c.require(!lens.empty(), "schedule.seq_len.discrete_lens", "FIXED_DISCRETE needs lengths");
    c.require(steps.size() + 1 == lens.size(), "schedule.seq_len.discrete_steps",
              absl::StrCat("needs one fewer entry than discrete_lens (", lens.size(), "), got ",
                           steps.size()));
    for (int i = 0; i < lens.size(); ++i) {
      c.require(lens[i] > 0 && lens[i] <= max_len, "schedule.seq_len.discrete_lens",
                absl::StrCat("length ", lens[i], " is outside (0, ", max_len, "]"));
      if (i > 0) {
        c.require(lens[i] >= lens[i - 1], "schedule.seq_len.discrete_lens", "must not decrease");
      }
    }
    for (int i = 0; i < steps.size(); ++i) {
      c.require(steps[i] > (i > 0 ? steps[i - 1] : 0), "schedule.seq_len.discrete_steps",
                "must be positive and increasing");
    }
  }
}

// The learning-rate schedule and the batch-size ramp, then the curriculum.
void check_schedules(const TrainConfig& cfg, Checker& c) {
  const LrSchedule& lr = cfg.schedule().lr();
  c.require(lr.warmup_steps() >= 0, "schedule.lr.warmup_steps",
            "must be >= 0, got " + num(lr.warmup_steps()));
  if (cfg.training().max_steps() > 0) {
    c.require(lr.warmup_steps() <= cfg.training().max_steps(), "schedule.lr.warmup_steps",
              absl::StrCat("warmup (", lr.warmup_steps(), ") is longer than training.max_steps (",
                           cfg.training().max_steps(), ")"));
  }
  c.require(lr.decay_fraction() >= 0 && lr.decay_fraction() <= 1, "schedule.lr.decay_fraction",
            "must be in [0, 1], got " + num(lr.decay_fraction()));
  c.require(lr.min_lr_ratio() >= 0 && lr.min_lr_ratio() <= 1, "schedule.lr.min_lr_ratio",
            "must be in [0, 1], got " + num(lr.min_lr_ratio()));

  const BatchRamp& ramp = cfg.schedule().batch_ramp();
  c.require(ramp.start() >= 0, "schedule.batch_ramp.start", "must be >= 0 (0 = no ramp)");
  if (ramp.start() > 0) {
    const int global = cfg.training().global_batch_size();
    c.require(ramp.start() <= global, "schedule.batch_ramp.start",
              absl::StrCat("start (", ramp.start(), ") exceeds training.global_batch_size (",
                           global, ")"));
    c.require(ramp.increment() > 0, "schedule.batch_ramp.increment",
              "must be > 0 when the ramp is on, got " + num(ramp.increment()));
    if (ramp.increment() > 0 && ramp.start() <= global) {
      c.require(
          (global - ramp.start()) % ramp.increment() == 0, "schedule.batch_ramp.increment",
          absl::StrCat("increment (", ramp.increment(), ") must divide global_batch_size - start (",
                       global - ramp.start(), ")"));
    }
    c.require(ramp.ramp_tokens() > 0, "schedule.batch_ramp.ramp_tokens",
              "must be > 0 when the ramp is on, got " + num(ramp.ramp_tokens()));
  }

  check_seq_len(cfg, c);
}

void check_training(const TrainingConfig& t, Checker& c) {
  c.require(t.global_batch_size() > 0, "training.global_batch_size",
            "must be > 0 (sequences per optimizer step), got " + num(t.global_batch_size()));
  c.require(t.max_steps() >= 0, "training.max_steps", "must be >= 0, got " + num(t.max_steps()));
  c.require(t.token_budget() >= 0, "training.token_budget",
            "must be >= 0, got " + num(t.token_budget()));
  c.require(t.max_steps() > 0 || t.token_budget() > 0, "training.max_steps",
            "set training.max_steps or training.token_budget to say when to stop");
  c.require(t.max_non_finite_steps() >= 1, "training.max_non_finite_steps",
            "must be >= 1 (non-finite steps in a row before the run stops), got " +
                num(t.max_non_finite_steps()));
}

void check_precision(const TrainConfig& cfg, Checker& c) {
  const PrecisionConfig& p = cfg.precision();
  if (p.dtype() == PrecisionConfig::FP16) {
    c.require(p.loss_scale_init() > 0, "precision.loss_scale_init",
              "must be > 0, got " + num(p.loss_scale_init()));
    c.require(p.loss_scale_growth() > 1, "precision.loss_scale_growth",
              "must be > 1, got " + num(p.loss_scale_growth()));
    c.require(p.loss_scale_backoff() > 0 && p.loss_scale_backoff() < 1,
              "precision.loss_scale_backoff",
              "must be in (0, 1), got " + num(p.loss_scale_backoff()));
    c.require(p.loss_scale_growth_interval() > 0, "precision.loss_scale_growth_interval",
              "must be > 0, got " + num(p.loss_scale_growth_interval()));
  }
  c.require(!(p.fp8_matmul() && cfg.device() == TrainConfig::CPU), "precision.fp8_matmul",
            "fp8 matmuls need device CUDA (a Hopper GPU); device is CPU");
  c.require(
      !p.fp8_matmul() || p.dtype() == PrecisionConfig::BF16 || p.dtype() == PrecisionConfig::AUTO,
      "precision.fp8_matmul", "fp8 matmuls run inside bf16 training: set precision.dtype: BF16");
}

void check_checkpoint(const CheckpointConfig& k, Checker& c) {
  c.require(k.every_n_steps() >= 0, "checkpoint.every_n_steps",
            "must be >= 0, got " + num(k.every_n_steps()));
  c.require(k.keep_last() >= 0, "checkpoint.keep_last",
            "must be >= 0 (0 = keep all), got " + num(k.keep_last()));
  c.require(k.keep_every() >= 0, "checkpoint.keep_every",
            "must be >= 0, got " + num(k.keep_every()));
  const std::string mode = absl::AsciiStrToLower(k.resume());
  if (mode != "auto" && mode != "never") {
    c.require(!k.resume().empty() && std::filesystem::exists(k.resume()), "checkpoint.resume",
              "'" + k.resume() + "' is neither auto, never nor an existing checkpoint path");
  }
}

void check_logging_and_eval(const TrainConfig& cfg, Checker& c) {
  c.require(cfg.name().find('/') == std::string::npos, "name",
            "'" + cfg.name() + "' must not contain '/'");
  c.require(cfg.logging().log_every() > 0, "logging.log_every",
            "must be > 0, got " + num(cfg.logging().log_every()));
  c.require(cfg.logging().peak_flops() >= 0, "logging.peak_flops",
            "must be >= 0, got " + num(cfg.logging().peak_flops()));
  const EvalConfig& e = cfg.eval();
  c.require(e.every_n_steps() >= 0, "eval.every_n_steps",
            "must be >= 0, got " + num(e.every_n_steps()));
  c.require(e.batches() > 0, "eval.batches", "must be > 0, got " + num(e.batches()));
  c.require(e.sample_every() >= 0, "eval.sample_every",
            "must be >= 0, got " + num(e.sample_every()));
  c.require(e.sample_tokens() >= 0, "eval.sample_tokens",
            "must be >= 0, got " + num(e.sample_tokens()));
  c.require(e.sample_temperature() > 0, "eval.sample_temperature",
            "must be > 0, got " + num(e.sample_temperature()));
  c.require(e.sample_top_k() >= 0, "eval.sample_top_k",
            "must be >= 0, got " + num(e.sample_top_k()));
}

}  // namespace

absl::Status validate_config(const TrainConfig& cfg) {
  Checker c;
  check_model(cfg.model(), c);
  check_data(cfg, c);
  check_parallel(cfg, c);
  check_optimizer(cfg.optimizer(), c);
  check_schedules(cfg, c);
  check_training(cfg.training(), c);
  check_precision(cfg, c);
  check_checkpoint(cfg.checkpoint(), c);
  check_logging_and_eval(cfg, c);
  return c.status();
}

absl::Status validate_world(const TrainConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel();
  Checker c;
  if (world_size <= 0 || p.tp() <= 0 || p.pp() <= 0) {
    c.require(world_size > 0, "parallel", absl::StrCat("world size must be > 0, got ", world_size));
    return c.status();
  }
  if (p.dp() > 0) {
    c.require(static_cast<int64_t>(p.dp()) * p.tp() * p.pp() == world_size, "parallel.dp",
              absl::StrCat("dp (", p.dp(), ") * tp (", p.tp(), ") * pp (", p.pp(),
                           ") = ", static_cast<int64_t>(p.dp()) * p.tp() * p.pp(),
                           " must equal the world size (", world_size, " ranks)"));
  } else {
    const int model_parallel = p.tp() * p.pp();
    c.require(world_size % model_parallel == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") * pp (", p.pp(), ") = ", model_parallel,
                           " must divide the world size (", world_size, " ranks)"));
    if (world_size % model_parallel == 0) check_batches(cfg, world_size / model_parallel, true, c);
  }
  return c.status();
}

}  // namespace kiln
