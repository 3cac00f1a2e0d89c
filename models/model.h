// The language-model interface that the trainer, checkpoints and parallel wrappers use, and the
// plain shape description (ModelSpec) both families are built from. Models never mention ranks.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/nn/module.h"
#include "core/random.h"
#include "parallel/shardable.h"
#include "proto/config.pb.h"

namespace kiln::models {

enum class Family { kGPT2, kLlama };
enum class Recompute { kNone, kSelective, kFull };

struct ModelSpec {
  Family family = Family::kGPT2;
  int64_t n_layer = 2, n_head = 2, n_kv_head = 2, d_model = 64, d_ff = 256;
  int64_t vocab_size = 50257, max_seq_len = 64;
  double rope_theta = 10000.0, norm_eps = 1e-5;
  bool tied_embeddings = true;
  bool bias = true;                 // biases in linears and LayerNorm (GPT-2 yes, Llama no)
  bool scale_residual_init = true;  // residual output projections get init_std / sqrt(2L)
  int64_t vocab_pad_multiple = 1;   // embedding/classifier rows padded up to a multiple of this
  double dropout = 0.0;
  double init_std = 0.02;
  DType param_dtype = DType::kF32;  // master parameters (f64 only for gradient-checking tests)
  int64_t head_dim() const { return d_model / n_head; }
  // Rows of the embedding and classifier: vocab_size padded (padded ids never occur as targets).
  int64_t padded_vocab() const {
    return (vocab_size + vocab_pad_multiple - 1) / vocab_pad_multiple * vocab_pad_multiple;
  }
};

// The part of a model that a pipeline stage builds: the token (and position) embedding or not,
// blocks [first_block, end_block), the final norm, classifier and loss or not. The default is the
// whole model. A stage's parameters keep the whole model's names ("h.2.attn.c_attn.weight" on the
// stage holding block 2) and equal its values bit for bit for the same seed: construction skips
// the generator counters of every part it leaves out (initialisation never depends on the split).
// GPT-2's tied classifier: a stage with the head but not the embedding still holds "wte.weight"
// (initialised exactly as the first stage's; it serves only as the classifier there). The copies
// start equal; pipeline parallelism keeps them equal by summing their gradients across the first
// and last stage, and writes one of them to checkpoints.
struct StageSpec {
  bool embedding = true;
  int64_t first_block = 0;
  int64_t end_block = -1;  // -1: n_layer
  bool head = true;
};

// The spec a resolved ModelConfig describes (see models/presets.h for resolution, parameter counts
// and FLOPs per token).
ModelSpec spec_from_config(const ModelConfig& model);

class LanguageModel : public nn::Module, public parallel::Shardable {
 public:
  explicit LanguageModel(const ModelSpec& spec) : spec_(spec) {}
  // ids: (B, T) integer tokens, T <= max_seq_len. Returns logits (B, T, V) in the compute dtype.
  virtual Tensor forward(const Tensor& ids) = 0;
  // Mean cross-entropy of forward(ids) against targets (B, T) (ignore index -100); a 0-dim f32
  // tensor.
  virtual Tensor loss(const Tensor& ids, const Tensor& targets);

  // Stage pieces (pipeline parallelism composes them: embed -> run_block over the stage's blocks
  // -> head_loss; the whole model's loss() is exactly that composition).
  // REQUIRES: the stage has the embedding. (B, T) ids -> (B, T, C) hidden.
  virtual Tensor embed(const Tensor& ids) = 0;
  // Block i of this stage (global block first_block() + i); applies the block hook and recompute.
  virtual Tensor run_block(int i, const Tensor& x) = 0;
  // REQUIRES: the stage has the head. Final norm, classifier and mean cross-entropy of (B, T, C)
  // hidden states against (B, T) targets; a 0-dim f32 tensor.
  virtual Tensor head_loss(const Tensor& x, const Tensor& targets) = 0;
  // What this model builds (end_block resolved); the whole model unless built by build_stage.
  const StageSpec& stage() const { return stage_; }
  int first_block() const { return static_cast<int>(stage_.first_block); }

  const ModelSpec& spec() const { return spec_; }
  void set_compute_dtype(DType t) { compute_ = t; }
  DType compute_dtype() const { return compute_; }
  void set_recompute(Recompute r) { recompute_ = r; }
  Recompute recompute() const { return recompute_; }
  // fp8 GEMMs (core/ops/fp8.h: e4m3 forward, e5m2 gradients) in every linear layer of the blocks,
  // not in the embeddings or the classifier. They run where nn::Linear::uses_fp8 allows (CUDA,
  // bf16 compute, dims and rows multiples of 16); elsewhere the layers compute as without.
  virtual void set_fp8(bool on) { fp8_ = on; }
  bool fp8() const { return fp8_; }
  // The generator dropout draws from (seeded per data-parallel rank by the trainer).
  Generator& dropout_generator() { return dropout_gen_; }

  // parallel::Shardable: blocks, their parameters and the block hook (see parallel/shardable.h).
  nn::Module& module() override { return *this; }
  void set_block_hook(BlockHook h) override { block_hook_ = std::move(h); }
  void set_classifier_hooks(ClassifierHooks h) override { classifier_hooks_ = std::move(h); }
  void set_embedding_output_hook(std::function<Tensor(const Tensor&)> h) override {
    embedding_output_hook_ = std::move(h);
  }

 protected:
  ModelSpec spec_;
  StageSpec stage_;
  DType compute_ = DType::kF32;
  Recompute recompute_ = Recompute::kNone;
  bool fp8_ = false;
  Generator dropout_gen_{0};
  BlockHook block_hook_;
  ClassifierHooks classifier_hooks_;
  std::function<Tensor(const Tensor&)> embedding_output_hook_;
};

// Builds a model with GPT-2 initialisation (N(0, init_std); residual output projections scaled by
// 1/sqrt(2L)) from a fixed seed: the same seed gives the same parameters on every machine.
std::unique_ptr<LanguageModel> build_model(const ModelSpec& spec, uint64_t seed);
// One pipeline stage of that model (see StageSpec): its parameters equal the same-named ones of
// build_model(spec, seed) bit for bit.
std::unique_ptr<LanguageModel> build_stage(const ModelSpec& spec, uint64_t seed,
                                           const StageSpec& stage);

}  // namespace kiln::models
