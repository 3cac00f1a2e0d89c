// The Trainer: composes a run from a resolved TrainConfig in one fixed order (mesh -> model ->
// pipeline split -> tensor parallel -> recompute -> data parallel / ZeRO -> forward-backward) and
// runs the training loop: the batch-size ramp and sequence-length curriculum, the fp16 loss scaler,
// clipping, the LR schedule and the optimizer step, periodic eval and text samples, checkpoints,
// one progress line per step, JSONL and TensorBoard. How a step's micro-batches run (gradient
// accumulation, later pipeline schedules) is parallel::ForwardBackward's business.
//
// Files: trainer.cc (composition and loop), trainer_setup.cc (each composition step),
// trainer_data.cc (batch sources, uploads), trainer_eval.cc (evaluation, samples), trainer_log.cc
// (the step line and metrics), trainer_checkpoint.cc (save / restore).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#if KILN_WITH_CUDA
#include "core/cuda/pinned.h"
#endif
#include "core/nn/precast.h"
#include "launch/batches.h"
#include "launch/metrics.h"
#include "launch/run_lock.h"
#include "launch/step_phases.h"
#include "models/model.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "parallel/forward_backward.h"
#include "parallel/mesh.h"
#include "parallel/pipeline/executor.h"
#include "parallel/world.h"
#include "proto/config.pb.h"

namespace kiln::launch {

struct TrainSummary {
  int64_t steps = 0;
  int64_t tokens = 0;
  std::vector<double> train_losses;                    // one per step run
  std::vector<std::pair<int64_t, double>> val_losses;  // (step, loss)
  std::string sample;                                  // the last text sample
  double seconds = 0;
  int64_t first_step = 0;    // the step this run started at (> 0 after resuming a checkpoint)
  bool interrupted = false;  // stopped early by SIGTERM / SIGINT (after saving a checkpoint)
  // Stopped after training.max_non_finite_steps non-finite steps in a row (nothing saved).
  bool non_finite_stop = false;
  int64_t skipped_steps = 0;  // steps not applied: non-finite, or an fp16 overflow
  std::string checkpoint;     // the last checkpoint saved, "" when none
};

// Text <-> ids for samples (the GPT-2 tokenizer in a normal run).
struct TextCodec {
  std::function<std::vector<int64_t>(const std::string&)> encode;
  std::function<std::string(const std::vector<int64_t>&)> decode;
  int64_t eot = -1;  // end-of-text id, the default prompt
};

class Trainer {
 public:
  // REQUIRES: `config` resolved (resolve_config, resolve_world). init() builds the mesh from the
  // config's dims and `world` (parallel::Mesh::create: MPI under mpirun / srun, files with
  // KILN_RENDEZVOUS, else single-process; NCCL groups on GPUs).
  Trainer(TrainConfig config, parallel::World world);
  ~Trainer();
  // Everything that can fail for outside reasons (data files, run directory) fails here.
  absl::Status init();
  absl::StatusOr<TrainSummary> run();

  void set_codec(TextCodec c) { codec_ = std::move(c); }
  // Replaces the data sources (tests); must be called after init().
  void set_sources(std::unique_ptr<BatchSource> train, std::unique_ptr<BatchSource> val);
  void set_quiet(bool q) { quiet_ = q; }
  // `kiln train`: init() locks the run folder (rank 0; launch/run_lock.h) and checks at start that
  // checkpoint.dir is writable on every rank. Off for tests and read-only commands.
  void set_exclusive(bool e) { exclusive_ = e; }
  // Read-only (kiln eval / sample): no metrics or TensorBoard files; call before init().
  void set_read_only(bool r) { read_only_ = r; }
  // The whole model (pp = 1); under pipeline parallelism this rank's first chunk. These two join
  // an optimizer step still running on the side stream (KILN_OVERLAP_OPTIM) first.
  models::LanguageModel& model() {
    join_optimizer();
    return *chunks_.front();
  }
  const models::LanguageModel& model() const {
    join_optimizer();
    return *chunks_.front();
  }
  parallel::DataParallel& data_parallel() {
    join_optimizer();
    return *dp_;
  }
  const parallel::Mesh& mesh() const { return *mesh_; }
  Device device() const { return device_; }

  double evaluate();  // mean validation loss over eval.batches micro-batches
  std::string sample(int64_t step);

  // Checkpoints (launch/checkpoint.h). init() already resumes as checkpoint.resume says; these
  // are for tests and tools. save_checkpoint is collective (every rank calls it) and stores the
  // state after the steps completed so far; restore_checkpoint (after init(), on every rank)
  // replaces all training state with a checkpoint's, resharding to this run's layout.
  absl::StatusOr<std::string> save_checkpoint();
  absl::Status restore_checkpoint(const std::string& path);
  int64_t steps_done() const { return step_; }
  const std::string& resumed_from() const { return resumed_from_; }

 private:
  // The composition steps of init(), in order (trainer_setup.cc).
  absl::Status make_device();  // device, compute dtype, the fp16 loss scaler
  absl::Status make_mesh();    // dims and groups: a bad layout fails before the model is built
  absl::Status make_model(bool init_from);  // on the device; training.init_from when asked
  absl::Status apply_model_parallel();      // tensor parallel on every chunk
  void apply_recompute();
  void make_data_parallel();  // DDP / ZeRO around the optimizer
  void make_forward_backward();
  void make_precast_cache();  // KILN_FUSED_PARAM_CAST, where it is known to be right
  void make_overlap_optim();  // KILN_OVERLAP_OPTIM, likewise (needs the cache)
  void make_schedules();
  absl::Status make_sources();  // trainer_data.cc
  absl::Status open_metrics();
  absl::Status lock_run_folder();  // set_exclusive (trainer_checkpoint.cc)
  // A batch on the training device; on GPUs through the pinned ring (never waits for the GPU).
  Tensor to_device(const Tensor& host);
  // The loop (trainer.cc).
  void run_step(int64_t step, TrainSummary* sum);
  double train_step(double lr, int64_t seq_len, int64_t global_batch, double* grad_norm);
  // KILN_OVERLAP_OPTIM: the optimizer step on the side stream, group by group (the gradients then
  // marked stale by zero_grad, as after any step); false (nothing done) where it is off or the
  // optimizer declines the step.
  bool step_on_side_stream(double lr, double grad_scale);
  // The compute stream waits for an optimizer step still running on the side stream; a no-op when
  // none is. Before anything but the next forward's parameter lookups reads parameters, moments or
  // gradients: the next backward, evaluation, samples, checkpoints, the end of run(), the
  // accessors above, the destructor.
  void join_optimizer() const {
    if (precast_cache_) precast_cache_->join();
  }
  absl::Status finish_run(TrainSummary* sum);
  // After every step: the periodic save and the SIGTERM / SIGINT check (agreed by all ranks).
  // Returns true when the run must stop.
  absl::StatusOr<bool> checkpoint_after_step(TrainSummary* sum);
  std::vector<parallel::Piece> checkpoint_pieces(bool for_load);  // trainer_checkpoint.cc
  // "The model" as one unit over chunks_ (trainer_setup.cc): every chunk's parameters and
  // tensor-parallel plan entries, in chunk order (names are global, so they never collide).
  std::vector<models::LanguageModel*> chunk_ptrs() const;
  std::vector<nn::Parameter> model_parameters() const;
  parallel::TpPlan model_tp_plan() const;
  // Logging (trainer_log.cc).
  void evaluate_and_log(int64_t step, TrainSummary* sum);
  void print_start();  // also sets peak_flops_
  void print_end(const TrainSummary& sum) const;
  void log_step(int64_t step, double loss, double lr, double gnorm, int64_t tokens, double dt);
  void log_skip(int64_t step, double loss, double gnorm);  // a step the guard did not apply
  void stop_non_finite(TrainSummary* sum);                 // after max_non_finite_steps in a row

  TrainConfig cfg_;
  parallel::World world_;
  Device device_;
  DType compute_ = DType::kF32;
  // The parameters cast to compute_ once per step (nn::PrecastScope); empty: cast per use.
  std::vector<Tensor> precast_;
  // KILN_FUSED_PARAM_CAST: their copies kept across steps, written by the optimizer step (AdamW on
  // the GPU; no ZeRO, tensor or pipeline parallelism); null: precast_ is cast every step.
  std::unique_ptr<nn::PrecastCache> precast_cache_;
  // KILN_OVERLAP_OPTIM: each optimizer parameter's group in precast_cache_ (its step runs on the
  // side stream); empty: the step runs on the compute stream. zero_grad follows either way.
  std::vector<int> overlap_groups_;
  std::unique_ptr<parallel::Mesh> mesh_;  // dims and groups; outlives everything using them
  // This rank's part of the model as pipeline chunks: one chunk, the whole model, at pp = 1; else
  // local chunk c is virtual stage c * pp + pp_rank (launch/pipeline_stage.h): one chunk per stage,
  // or virtual_stages of them with INTERLEAVED_1F1B. Whatever acts on the model acts on every
  // chunk (model_parameters, model_tp_plan); chunk 0 of stage 0 holds the embedding and the last
  // chunk of the last stage the head (and GPT-2's tied copy).
  std::vector<std::unique_ptr<models::LanguageModel>> chunks_;
  std::unique_ptr<parallel::DataParallel> dp_;
  std::unique_ptr<parallel::ForwardBackward> forward_backward_;
  std::unique_ptr<parallel::pipeline::StageWork> stage_work_;  // pp > 1: this stage's chunks
  parallel::pipeline::PipelineExecutor* pipeline_ = nullptr;   // forward_backward_ when pp > 1
  std::unique_ptr<optim::LossScaler> scaler_;
  optim::LrSchedule lr_;
  optim::BatchRamp ramp_;
  optim::SeqLenCurriculum curriculum_;
  std::unique_ptr<BatchSource> train_, val_;
  std::function<std::unique_ptr<BatchSource>()> make_val_;
  MetricsLogger metrics_;
  TextCodec codec_;
  Generator sample_gen_{0};
#if KILN_WITH_CUDA
  cuda::PinnedRing pinned_{4};  // inputs and targets of two micro-steps in flight
#endif
  int64_t tokens_seen_ = 0;
  int64_t seq_len_ = 0, batch_ = 0;  // of the current step
  double flops_per_token_full_ = 0;
  double peak_flops_ = 0;  // MFU denominator per device (trainer_log.h); 0: no MFU
  double t_start_ = 0;     // when run() began
  double elapsed_ = 0;     // step time after the first step (ETA, tokens/s)
  double train_time_ = 0;  // all step time, evaluation excluded
  int64_t tokens_timed_ = 0;
  bool by_tokens_ = false;  // schedules over tokens (a token budget is set)
  int64_t steps_timed_ = 0;
  bool quiet_ = false;
  bool exclusive_ = false;
  bool read_only_ = false;
  std::unique_ptr<RunLock> lock_;  // rank 0 of an exclusive run
  int64_t step_ = 0;               // optimizer steps completed (the next step's index)
  double last_lr_ = 0;             // learning rate of the last step (checkpoint schedule state)
  int64_t saved_step_ = -1;        // step of the last checkpoint saved by this run
  std::string resumed_from_;
  // The non-finite guard (trainer.cc): what train_step decided about the last step, agreed by
  // every rank, and the non-finite steps in a row so far.
  struct StepHealth {
    bool applied = true;      // the optimizer stepped
    bool non_finite = false;  // loss (or, without a loss scaler, gradient norm) NaN / Inf
    bool overflow = false;    // fp16: only the scaled gradients overflowed (the scaler's skip)
  };
  StepHealth health_;
  int64_t non_finite_run_ = 0;
  StepPhases phases_;  // host time per step phase, when StepPhases::enabled()
  void mark(StepPhases::Point p) {
    if (StepPhases::enabled()) phases_.mark(p);
  }
};

// Fills the optimizer's decay flags from optimizer.decay_min_dim and optimizer.no_decay globs.
// REQUIRES: `oc` resolved (resolve_config sets decay_min_dim).
void apply_decay_rules(const OptimizerConfig& oc, std::vector<nn::Parameter>* params);

}  // namespace kiln::launch
