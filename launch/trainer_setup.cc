// The Trainer's composition steps, each building one layer of the run from the resolved config:
// device and precision, the mesh, the model (this rank's pipeline chunks), tensor parallel,
// activation recompute, data parallel / ZeRO, the forward-backward schedule, the LR and
// batch schedules, the metrics files. init() (trainer.cc) calls them in that order.
#include <fnmatch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/backend.h"
#if KILN_WITH_CUDA
#include "core/cuda/runtime.h"
#endif
#include "launch/hf_mapping.h"
#include "launch/pipeline_stage.h"
#include "launch/trainer.h"
#include "models/presets.h"
#include "parallel/tensor_parallel/apply.h"

namespace kiln::launch {
namespace {

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

DType compute_dtype(PrecisionConfig::Dtype d, bool gpu) {
  switch (d) {
    case PrecisionConfig::BF16:
      return DType::kBF16;
    case PrecisionConfig::FP16:
      return DType::kF16;
    case PrecisionConfig::FP32:
      return DType::kF32;
    default:  // AUTO
      return gpu ? DType::kBF16 : DType::kF32;
  }
}

}  // namespace

void apply_decay_rules(const OptimizerConfig& oc, std::vector<nn::Parameter>* params) {
  for (nn::Parameter& p : *params) {
    p.decay = p.tensor.dim() >= oc.decay_min_dim();
    for (const std::string& pat : oc.no_decay())
      if (fnmatch(pat.c_str(), p.name.c_str(), 0) == 0) p.decay = false;
  }
}

absl::Status Trainer::make_device() {
  const bool gpu = cfg_.device() == TrainConfig::CUDA ||
                   (cfg_.device() == TrainConfig::AUTO && cuda_available());
  if (gpu && !cuda_available())
    return absl::FailedPreconditionError("device: CUDA requested but no GPU is available");
  // Local rank modulo the visible GPUs (srun --gpus-per-task=1 shows each task one GPU).
  const int gpu_index = gpu ? parallel::local_device(world_, cuda_backend().device_count()) : 0;
  device_ = gpu ? Device::cuda(gpu_index) : Device::cpu();
#if KILN_WITH_CUDA
  if (gpu) {
    cuda::set_device(gpu_index);
    cuda::set_deterministic(cfg_.training().deterministic());
  }
#endif
  compute_ = compute_dtype(cfg_.precision().dtype(), gpu);
  if (compute_ == DType::kF16) {
    const PrecisionConfig& p = cfg_.precision();
    scaler_ =
        std::make_unique<optim::LossScaler>(p.loss_scale_init(), p.loss_scale_growth_interval(),
                                            p.loss_scale_growth(), p.loss_scale_backoff());
  }
  return absl::OkStatus();
}

absl::Status Trainer::make_mesh() {
  const ParallelConfig& p = cfg_.parallel();
  absl::StatusOr<parallel::ParallelDims> dims = parallel::make_dims(p.dp(), p.tp(), p.pp(), world_);
  if (!dims.ok()) return dims.status();
  parallel::MeshOptions opts;
  opts.gpu = device_.is_cuda();
  opts.timeout_s = p.timeout_s();
  opts.device_index = device_.is_cuda() ? device_.index : 0;
  absl::StatusOr<std::unique_ptr<parallel::Mesh>> mesh =
      parallel::Mesh::create(*dims, world_, opts);
  if (!mesh.ok()) return mesh.status();
  mesh_ = std::move(*mesh);
  if (world_.rank == 0 && !quiet_)
    std::printf("kiln: %s\n",
                parallel::describe_world(world_, mesh_->backends(), device_.str()).c_str());
  return absl::OkStatus();
}

absl::Status Trainer::make_model(bool init_from) {
  const uint64_t seed = cfg_.training().seed();
  const models::ModelSpec spec = models::spec_from_config(cfg_.model());
  // The pipeline split: this rank builds only its chunks (same weights as the whole model's).
  const int pp = mesh_->dims().pp;
  const int v = schedule_spec(cfg_.parallel(), false).virtual_stages;
  const std::vector<int64_t> layers = pipeline_layers(cfg_.parallel(), cfg_.model());
  chunks_.clear();
  for (int c = 0; c < (pp > 1 ? v : 1); ++c)
    chunks_.push_back(
        pp > 1 ? models::build_stage(spec, seed, stage_spec(layers, c * pp + mesh_->pp_rank()))
               : models::build_model(spec, seed));
  if (init_from && !cfg_.training().init_from().empty()) {
    absl::Status s = import_safetensors(cfg_.training().init_from(), cfg_.model(),
                                        model_parameters(), /*stage=*/pp > 1);
    if (!s.ok()) return absl::Status(s.code(), "training.init_from: " + std::string(s.message()));
    if (world_.rank == 0 && !quiet_)
      std::printf("kiln: initialised the model from %s\n", cfg_.training().init_from().c_str());
  }
  for (size_t c = 0; c < chunks_.size(); ++c) {
    models::LanguageModel& m = *chunks_[c];
    m.to(device_);
    m.set_compute_dtype(compute_);
    m.set_fp8(cfg_.precision().fp8_matmul());
    // One stream per tp group (its ranks apply dropout to the same replicated activations) and
    // chunk.
    m.dropout_generator() =
        Generator(seed * 1000003 + world_.rank / mesh_->dims().tp + c * 7919 * world_.size);
  }
  sample_gen_ = Generator(seed + 17);
  return absl::OkStatus();
}

std::vector<models::LanguageModel*> Trainer::chunk_ptrs() const {
  std::vector<models::LanguageModel*> out;
  for (const auto& c : chunks_) out.push_back(c.get());
  return out;
}

std::vector<nn::Parameter> Trainer::model_parameters() const {
  std::vector<nn::Parameter> out;
  for (const auto& c : chunks_) {
    std::vector<nn::Parameter> ps = c->parameters();
    out.insert(out.end(), ps.begin(), ps.end());
  }
  return out;
}

parallel::TpPlan Trainer::model_tp_plan() const {
  parallel::TpPlan out;
  for (const auto& c : chunks_) {
    parallel::TpPlan p = c->tensor_parallel_plan();
    out.entries.insert(out.entries.end(), p.entries.begin(), p.entries.end());
  }
  return out;
}

// The pipeline split ran in make_model (the chunks of this stage), then tensor parallel over the
// mesh's tp group (parallel/tensor_parallel/apply.h), chunk by chunk. The config checks for tp and
// pp (heads, kv heads, d_ff, vocabulary, layers, batches) ran before start.
absl::Status Trainer::apply_model_parallel() {
  if (mesh_->dims().tp == 1) return absl::OkStatus();
  parallel::TensorParallelOptions o;
  o.sequence_parallel = cfg_.parallel().sequence_parallel();
  for (const auto& c : chunks_) {
    absl::Status s = parallel::apply_tensor_parallel(*c, mesh_->tp(), o);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void Trainer::apply_recompute() {
  const RecomputeConfig::Policy p = cfg_.recompute().policy();
  for (const auto& c : chunks_)
    c->set_recompute(p == RecomputeConfig::FULL        ? models::Recompute::kFull
                     : p == RecomputeConfig::SELECTIVE ? models::Recompute::kSelective
                                                       : models::Recompute::kNone);
}

void Trainer::make_data_parallel() {
  std::vector<nn::Parameter> params = model_parameters();
  // GPT-2's tied classifier on the last stage is a copy of the first stage's embedding: the first
  // stage trains it (and checkpoints it); the copy follows after each step (sync_tied_weights).
  const Tensor tied = tied_copy(*chunks_.back());
  if (tied.defined())
    std::erase_if(params,
                  [&](const nn::Parameter& p) { return p.tensor.impl_ptr() == tied.impl_ptr(); });
  const OptimizerConfig& oc = cfg_.optimizer();
  apply_decay_rules(oc, &params);
  parallel::DataParallelOptions dpo;
  dpo.zero_stage = cfg_.parallel().zero_stage();
  dpo.bucket_mb = cfg_.parallel().bucket_mb();
  dpo.gather_dtype = compute_;
  const parallel::Mesh* mesh = mesh_.get();
  dpo.sum_over_model_parallel = [mesh](double sq) { return mesh->sum_over_model_parallel(sq); };
  if (mesh->dims().tp > 1) {  // parameters every tp rank holds whole are counted by one of them
    auto whole = std::make_shared<std::set<std::string>>();
    for (const parallel::TpEntry& e : model_tp_plan().entries)
      if (e.dim < 0) whole->insert(e.name);
    dpo.counts_in_norm = [mesh, whole](const std::string& name) {
      return mesh->counts_replicated() || whole->count(name) == 0;
    };
  }
  auto make_opt = [oc](std::vector<nn::Parameter> pieces) -> std::unique_ptr<optim::Optimizer> {
    if (oc.type() == OptimizerConfig::SGD)
      return std::make_unique<optim::SGD>(std::move(pieces), oc.momentum(), oc.weight_decay(),
                                          oc.nesterov());
    return std::make_unique<optim::AdamW>(
        std::move(pieces),
        optim::AdamWOptions{oc.beta1(), oc.beta2(), oc.eps(), oc.weight_decay()});
  };
  // The model is used by ZeRO-3 only (its block hooks), which pipeline parallel refuses: with
  // several chunks, the parameters of all of them are in `params`.
  dp_ = std::make_unique<parallel::DataParallel>(*chunks_.front(), params, mesh_->dp(), dpo,
                                                 make_opt);
}

void Trainer::make_forward_backward() {
  // One batched cast of the parameters per step on GPUs (KILN_PRECAST=0 switches it off, for
  // A/B runs); not with ZeRO-3, whose parameters are gathered per block.
  const char* pre = std::getenv("KILN_PRECAST");
  if (device_.is_cuda() && (compute_ == DType::kBF16 || compute_ == DType::kF16) &&
      cfg_.parallel().zero_stage() < 3 && !(pre && std::string(pre) == "0")) {
    for (const nn::Parameter& p : model_parameters()) precast_.push_back(p.tensor);
    make_precast_cache();
  }
  if (mesh_->dims().pp > 1) {
    const auto spec = schedule_spec(cfg_.parallel(), chunks_.front()->spec().tied_embeddings);
    stage_work_ = std::make_unique<ModelStageWork>(chunk_ptrs(),
                                                   parallel::pipeline::splits_backward(spec.kind));
    auto exec =
        std::make_unique<parallel::pipeline::PipelineExecutor>(spec, mesh_->pp(), *stage_work_);
    pipeline_ = exec.get();
    forward_backward_ = std::move(exec);
    return;
  }
  models::LanguageModel* model = chunks_.front().get();
  // The forward waited for each group of a side-stream optimizer step it used (KILN_OVERLAP_OPTIM);
  // the backward, which writes the gradients that step zeroes, waits for all of it.
  forward_backward_ = std::make_unique<parallel::NoPipeline>(
      [this, model](const Tensor& inputs, const Tensor& targets) {
        Tensor loss = model->loss(inputs, targets);
        join_optimizer();
        return loss;
      });
}

void Trainer::make_precast_cache() {
  // Only where the optimizer's pieces are the model's parameters themselves and nothing but its
  // step changes them: ZeRO updates shards and gathers them, pipeline parallelism copies GPT-2's
  // tied weights after the step, and tensor parallelism and data parallelism (whose replicas would
  // each write their own copies) are left out until they are tested on GPUs.
  const parallel::ParallelDims& d = mesh_->dims();
  if (!nn::fused_param_cast_enabled() || dp_->zero_stage() != 0 || d.tp != 1 || d.pp != 1 ||
      d.dp != 1)
    return;
  auto cache = std::make_unique<nn::PrecastCache>(precast_, compute_);
  if (cache->size() == 0) return;
  // Every cached parameter must be exactly one of the optimizer's (else its copy would go stale).
  optim::Optimizer& opt = dp_->optimizer();
  std::vector<Tensor> copies;
  std::unordered_set<const TensorImpl*> matched;
  bool twice = false;
  for (const nn::Parameter& p : opt.params()) {
    copies.push_back(cache->copy_of(p.tensor));
    if (copies.back().defined()) twice |= !matched.insert(p.tensor.impl()).second;
  }
  if (twice || static_cast<int64_t>(matched.size()) != cache->size() ||
      !opt.set_param_copies(std::move(copies))) {
    opt.set_param_copies({});
    return;
  }
  precast_cache_ = std::move(cache);
  make_overlap_optim();
}

void Trainer::make_overlap_optim() {
  // The step on the side stream must cover exactly what the next forward reads: every optimizer
  // parameter with elements is cached (so every read of it in the forward waits for its group:
  // nn::to_compute), and its gradients are all of the data-parallel gradient memory (stage 0, one
  // replica: no padding), which zero_grad then only marks stale. The optimizer may still decline
  // a step (Optimizer::step_grouped); the trainer then takes the ordinary path for it.
  overlap_groups_.clear();
  if (!nn::overlap_optim_enabled() || !precast_cache_ || !device_.is_cuda() ||
      cfg_.optimizer().type() == OptimizerConfig::SGD)
    return;
  std::vector<int> groups;
  int64_t numel = 0;
  for (const nn::Parameter& p : dp_->optimizer().params()) {
    const int g = precast_cache_->group_of(p.tensor);
    if (g < 0 && p.tensor.numel() > 0) return;  // a parameter the forward would read unwaited
    groups.push_back(std::max(g, 0));
    numel += p.tensor.numel();
  }
  if (dp_->gradient_bytes() != numel * static_cast<int64_t>(sizeof(float))) return;
  overlap_groups_ = std::move(groups);
}

void Trainer::make_schedules() {
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
         cfg_.optimizer().lr(),
         sc.lr().min_lr_ratio(),
         static_cast<double>(sc.lr().warmup_steps()) * unit,
         by_tokens_ ? static_cast<double>(budget) : static_cast<double>(max_steps),
         sc.lr().decay_fraction()};
  ramp_ = {sc.batch_ramp().start(), sc.batch_ramp().increment(), gb,
           static_cast<double>(sc.batch_ramp().ramp_tokens())};
  // The curriculum's fields are resolved (resolve_config) when it is on; off, every step has seq.
  const auto& cc = sc.seq_len();
  curriculum_.kind = curriculum_kind(cc.kind());
  curriculum_.min_len = cc.min_len();
  curriculum_.max_len = curriculum_.kind == optim::CurriculumKind::kNone ? seq : cc.max_len();
  curriculum_.steps = cc.steps();
  curriculum_.multiple = cc.step_multiple();
  curriculum_.root_degree = cc.root_degree();
  curriculum_.lengths.assign(cc.discrete_lens().begin(), cc.discrete_lens().end());
  curriculum_.until.assign(cc.discrete_steps().begin(), cc.discrete_steps().end());
  flops_per_token_full_ = training_flops_per_token(cfg_.model(), seq);
}

absl::Status Trainer::open_metrics() {
  if (world_.rank != 0 || read_only_) return absl::OkStatus();
  // Only a fresh run (resume "never", run_folder.h checked the folder) starts the files anew.
  return metrics_.open(cfg_.logging().run_dir(), cfg_.logging().jsonl(),
                       cfg_.logging().tensorboard(),
                       /*append=*/absl::AsciiStrToLower(cfg_.checkpoint().resume()) != "never",
                       /*purge_from=*/resumed_from_.empty() ? 0 : step_ + 1);
}

}  // namespace kiln::launch
