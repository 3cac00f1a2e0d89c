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

class Attention : public nn::Module {
 public:
  Attention(const ModelSpec& s, Generator& gen);
  Tensor forward(const Tensor& x, DType compute, Recompute rc, Generator& drop, bool train);
  const ModelSpec spec;
  std::shared_ptr<nn::Linear> c_attn, c_proj;                  // GPT-2: fused qkv (3C, C), (C, C)
  std::shared_ptr<nn::Linear> q_proj, k_proj, v_proj, o_proj;  // Llama
};

class Mlp : public nn::Module {
 public:
  Mlp(const ModelSpec& s, Generator& gen);
  Tensor forward(const Tensor& x, DType compute, Recompute rc);
  const ModelSpec spec;
  std::shared_ptr<nn::Linear> c_fc, c_proj;                   // GPT-2: (4C, C), (C, 4C)
  std::shared_ptr<nn::Linear> gate_proj, up_proj, down_proj;  // Llama
};

class Block : public nn::Module {
 public:
  Block(const ModelSpec& s, Generator& gen);
  // x: (B, T, C) in the compute dtype -> same.
  Tensor forward(const Tensor& x, DType compute, Recompute rc, Generator& drop, bool train);
  const ModelSpec spec;
  std::shared_ptr<nn::LayerNorm> ln_1, ln_2;                               // GPT-2
  std::shared_ptr<nn::RMSNorm> input_layernorm, post_attention_layernorm;  // Llama
  std::shared_ptr<Attention> attn;
  std::shared_ptr<Mlp> mlp;
};

class Transformer : public LanguageModel {
 public:
  Transformer(const ModelSpec& s, uint64_t seed);
  Tensor forward(const Tensor& ids) override;
  Tensor loss(const Tensor& ids, const Tensor& targets) override;
  // Pieces, for pipeline stages and tests.
  Tensor embed(const Tensor& ids);           // (B, T) -> (B, T, C)
  Tensor run_block(int i, const Tensor& x);  // applies the block hook and the recompute policy
  Tensor head(const Tensor& x);              // final norm + classifier -> (B, T, V)
  // Sets nn::Linear::fp8 on every linear layer of the blocks (attention and MLP).
  void set_fp8(bool on) override;
  int num_blocks() const override { return static_cast<int>(h.size()); }
  std::vector<std::vector<int>> block_parameter_indices() const override;

  std::shared_ptr<nn::Embedding> wte, wpe;  // GPT-2 names (Llama: wte = embed_tokens)
  std::vector<std::shared_ptr<Block>> h;
  std::shared_ptr<nn::LayerNorm> ln_f;
  std::shared_ptr<nn::RMSNorm> norm;
  std::shared_ptr<nn::Linear> lm_head;  // untied only

 private:
  Tensor run_block_unhooked(int i, const Tensor& x);
};

}  // namespace kiln::models
