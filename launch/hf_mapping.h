// Hugging Face interchange: the mapping between kiln's parameter names and transformers' GPT-2
// (GPT2LMHeadModel) and Llama (LlamaForCausalLM) names, export of a checkpoint's fp32 weights to
// model.safetensors + config.json, and import of such weights into a model (continued
// pre-training). No pickle anywhere. The commands are in launch/weights_cli.h.
//
// GPT-2: kiln "h.N.attn.c_attn.weight" (3C, C) is transformers' Conv1D "transformer.h.N.attn.
// c_attn.weight" stored (in, out) = (C, 3C): attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj
// weights are transposed; every other tensor gets the "transformer." prefix unchanged; a model
// without biases exports zero biases (GPT-2 always has them). Llama: "model." + name, unchanged
// (nn.Linear is (out, in) like kiln's, and kiln's rotary embedding already pairs element i with
// i + D/2 as transformers' rotate_half does, so q/k need no permutation); lm_head.weight stays
// lm_head.weight. Embedding and head rows padded by vocab_pad_multiple are sliced to vocab_size on
// export and zero-filled on import.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/nn/module.h"
#include "proto/config.pb.h"

namespace kiln::launch {

// One exported tensor: where it comes from and how it is transformed.
struct HfTensor {
  std::string hf_name;
  std::string kiln_name;  // "" for a zero bias that kiln does not have
  bool transpose = false;
  bool slice_vocab = false;
  std::vector<int64_t> hf_shape;
};

// Every tensor transformers expects for this (resolved) model, in a stable order.
std::vector<HfTensor> hf_tensors(const ModelConfig& model);

// How `kiln export` writes the weights.
struct HfExportOptions {
  bool bf16 = false;  // BF16 tensors (rounded to nearest even from the fp32 masters), else F32
  // bos / eos id (the tokenizer's <|endoftext|>); -1: unknown (GPT-2 with a vocabulary above
  // 50256 then says 50256, GPT-2's).
  int64_t eot = -1;
};

// config.json for the model (GPT2LMHeadModel / LlamaForCausalLM; torch_dtype float32 or bfloat16,
// bos_token_id / eos_token_id when known).
std::string hf_config_json(const ModelConfig& model, const HfExportOptions& opts = {});

// Reads the checkpoint's fp32 parameters and writes OUT_DIR/model.safetensors and
// OUT_DIR/config.json. Errors name the checkpoint file or tensor.
absl::Status export_safetensors(const std::string& checkpoint, const std::string& out_dir,
                                const HfExportOptions& opts = {});

// Copies Hugging Face-named weights (a directory with model.safetensors, or a .safetensors file)
// into `params` (any device). F32, BF16 and F16 files are accepted. When the directory holds a
// config.json, its shape fields must agree with `model`. Errors name the tensor or field: a
// missing tensor, a shape that differs, a tensor this model has no place for. `stage`: `params`
// are one pipeline stage's (models::build_stage), so the whole model's file holds tensors of the
// other stages, which are skipped (after their shape check); each of `params` must still be there.
absl::Status import_safetensors(const std::string& path, const ModelConfig& model,
                                const std::vector<nn::Parameter>& params, bool stage = false);

}  // namespace kiln::launch
