// GPT-2 and Llama-style decoder stacks. GPT-2: learned positions, LayerNorm, GELU MLP, biases, tied
// classifier. Llama: RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention, no biases,
// untied classifier. Parameter names follow Hugging Face's (minus the "transformer."/"model."
// prefix) so export is a renaming.
#pragma once

#include <memory>
#include <vector>

#include "core/nn/layers.h"
#include "models/model.h"

namespace kiln::models {

// Whether Llama blocks on CUDA run q/k/v and gate/up as one GEMM each (the default since its GPU
// tests passed and Llama 1B measured faster, 2026-12-06), or one per projection
// (KILN_FUSED_PROJ=0, read once). Only the compute is fused: the projections stay separate
// Parameters (tensor parallel, checkpoints and export see the same names and shapes).
bool fused_projections_default();
// Residual fusions of Block::forward, each on by default (since 2026-12-06) and off with its
// environment variable set to 0 (read once): KILN_RESID_EPILOGUE adds the MLP's residual in its
// last GEMM's epilogue (linear_add / mlp_gelu with a residual; training without dropout, 16-bit
// compute on CUDA, no fp8 or tensor-parallel hook on that GEMM), KILN_NORM_SKIP_FUSED runs the
// first norm and the block input's skip path as one op (rms_norm_with_skip /
// layer_norm_with_skip) whose backward sums the input's two gradients in the norm backward kernel.
bool resid_epilogue_default();
bool norm_skip_fused_default();
// Tests only: KILN_RESID_FUSE_ON_CPU=1 sets Block::fuse_on_cpu, so whole test suites (tensor and
// pipeline parallel, recompute, trainer) run the fused wiring on the CPU.
bool resid_fuse_on_cpu_default();

class Attention : public nn::Module {
 public:
  Attention(const ModelSpec& s, Generator& gen);
  Tensor forward(const Tensor& x, DType compute, Recompute rc, Generator& drop, bool train);
  // Heads this module computes, read from its weights' shapes (not the spec), so that a
  // tensor-parallel shard holding some heads' rows runs with those heads: GPT-2 c_attn rows /
  // (3 * head_dim), Llama q_proj rows / head_dim (and k_proj rows / head_dim kv heads).
  int64_t local_heads() const;
  int64_t local_kv_heads() const;
  const ModelSpec spec;
  std::shared_ptr<nn::Linear> c_attn, c_proj;                  // GPT-2: fused qkv (3C, C), (C, C)
  std::shared_ptr<nn::Linear> q_proj, k_proj, v_proj, o_proj;  // Llama
  // Llama: x @ concat(Wq, Wk, Wv)^T as one GEMM on CUDA where no fp8 / tensor-parallel hook is
  // in the way (models/transformer.cc); fuse_on_cpu (tests only) takes that path on the CPU too.
  bool fuse_proj = fused_projections_default(), fuse_on_cpu = false;
};

class Mlp : public nn::Module {
 public:
  Mlp(const ModelSpec& s, Generator& gen);
  // With a residual ((B, T, C) in the compute dtype) returns mlp(x) + residual, the add in the last
  // GEMM's epilogue where no fp8 or tensor-parallel hook is on that GEMM.
  Tensor forward(const Tensor& x, DType compute, Recompute rc, const Tensor& residual = Tensor());
  const ModelSpec spec;
  std::shared_ptr<nn::Linear> c_fc, c_proj;                   // GPT-2: (4C, C), (C, 4C)
  std::shared_ptr<nn::Linear> gate_proj, up_proj, down_proj;  // Llama
  // Llama: x @ concat(Wgate, Wup)^T as one GEMM and swiglu_packed, as Attention fuses q/k/v.
  bool fuse_proj = fused_projections_default(), fuse_on_cpu = false;
};

class Block : public nn::Module {
 public:
  Block(const ModelSpec& s, Generator& gen);
  // Generator counters a block's construction draws (a stage reserves them for blocks it skips).
  static uint64_t init_counters(const ModelSpec& s);
  // x: (B, T, C) in the compute dtype -> same.
  Tensor forward(const Tensor& x, DType compute, Recompute rc, Generator& drop, bool train);
  const ModelSpec spec;
  std::shared_ptr<nn::LayerNorm> ln_1, ln_2;                               // GPT-2
  std::shared_ptr<nn::RMSNorm> input_layernorm, post_attention_layernorm;  // Llama
  std::shared_ptr<Attention> attn;
  std::shared_ptr<Mlp> mlp;
  // The residual fusions (see resid_epilogue_default); fuse_on_cpu (tests only) takes them on the
  // CPU too, where the ops compose the unfused ones (the same bits).
  bool resid_epilogue = resid_epilogue_default(), norm_skip_fused = norm_skip_fused_default();
  bool fuse_on_cpu = resid_fuse_on_cpu_default();
};

class Transformer : public LanguageModel {
 public:
  // The whole model, or the stage `stage` describes (see StageSpec in models/model.h).
  Transformer(const ModelSpec& s, uint64_t seed, const StageSpec& stage = StageSpec());
  Tensor forward(const Tensor& ids) override;
  Tensor loss(const Tensor& ids, const Tensor& targets) override;
  // Pieces, for pipeline stages and tests (see LanguageModel).
  Tensor embed(const Tensor& ids) override;           // (B, T) -> (B, T, C)
  Tensor run_block(int i, const Tensor& x) override;  // local block i; hook and recompute
  Tensor head(const Tensor& x);                       // final norm + classifier -> (B, T, V)
  Tensor head_loss(const Tensor& x, const Tensor& targets) override;
  // Column: c_attn (3 partitions: q, k, v), c_fc, q/k/v/gate/up_proj; row: attention and MLP
  // output projections (their biases replicated); vocab: wte / embed_tokens and lm_head; norms:
  // sequence; wpe: replicated.
  parallel::TpPlan tensor_parallel_plan() const override;
  // Sets nn::Linear::fp8 on every linear layer of the blocks (attention and MLP).
  void set_fp8(bool on) override;
  int num_blocks() const override { return static_cast<int>(h.size()); }
  std::vector<std::vector<int>> block_parameter_indices() const override;

  // Members a stage does not build are null (wte is built for the head of a tied stage too).
  std::shared_ptr<nn::Embedding> wte, wpe;  // GPT-2 names (Llama: wte = embed_tokens)
  std::vector<std::shared_ptr<Block>> h;    // the stage's blocks: h[i] is block first_block() + i
  std::shared_ptr<nn::LayerNorm> ln_f;
  std::shared_ptr<nn::RMSNorm> norm;
  std::shared_ptr<nn::Linear> lm_head;  // untied only

 private:
  Tensor run_block_unhooked(int i, const Tensor& x);
};

}  // namespace kiln::models
