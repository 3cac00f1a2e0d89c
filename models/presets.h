// Model presets: named GPT-2 and Llama shapes, the resolution of a ModelConfig (preset, then the
// fields set explicitly, then family defaults), and the parameter count and training FLOPs per
// token of a resolved shape.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace kiln {

// Names of all presets, in a stable order.
std::vector<std::string> preset_names();

// The preset's model section: family, preset name and shape fields. The GPT-2 presets leave
// n_kv_head and d_ff unset (family defaults: n_head and 4*d_model), so that overriding n_head or
// d_model keeps them consistent; the Llama presets set both (grouped-query heads and the published
// MLP widths). NotFound naming the known presets when `name` is not one.
absl::StatusOr<ModelConfig> get_preset(std::string_view name);

// Resolves `model` in place: fields present in `model` win; unset fields come from model.preset
// (when given), then from the family defaults. d_ff of 0 means the family default. Afterwards every
// optional field is set. Errors name the field: unknown preset, a family conflicting with the
// preset's, no family, a missing shape field.
absl::Status resolve_model_config(ModelConfig* model);

// Family default of d_ff: GPT2 4*C; LLAMA 256 * ceil((8*C/3) / 256) (the Llama reference rounding).
int default_ffn_dim(ModelConfig::Family family, int d_model);

// vocab_size rounded up to vocab_pad_multiple: the rows of the embedding and head tensors.
int64_t padded_vocab_size(const ModelConfig& model);

// Parameter counts of a resolved model (V = padded vocab, C = d_model, F = d_ff, L = n_layer, T =
// max_seq_len, K = n_kv_head * C / n_head the key/value width, b = 1 with biases else 0):
//   token embedding  V*C
//   positions        T*C (GPT2; LLAMA uses rotary, none)
//   per block        attention  C*(C + 2K) + C*C           + b*(C + 2K + C)
//                    MLP        GPT2 2*C*F, LLAMA 3*C*F     + b*(F + C)
//                    norms      2 per block: LayerNorm (1 + b)*C each, RMSNorm C each
//   final norm       one more norm
//   head             V*C unless tied_embeddings
struct ParamCounts {
  int64_t token_embedding = 0;
  int64_t position_embedding = 0;
  int64_t per_block = 0;
  int64_t blocks = 0;  // n_layer * per_block
  int64_t final_norm = 0;
  int64_t head = 0;  // 0 when tied
  int64_t total = 0;
  // Parameters that take part in per-token arithmetic: total minus the lookup-only tables (position
  // embedding, and the token embedding when it is not tied to the head).
  int64_t matmul = 0;
};
ParamCounts count_params(const ModelConfig& model);
int64_t param_count(const ModelConfig& model);  // count_params(model).total

// Training FLOPs per token (forward + backward) at sequence length seq_len, the formula every MFU
// number in kiln uses:  6 * N + 12 * L * C * T,  N = count_params(model).matmul, L = n_layer, C =
// n_head * head_dim = d_model, T = seq_len. 6N counts each weight's multiply-add forward (2) and
// backward (4); 12*L*C*T counts the attention scores QK^T and the weighted sum AV (2 * 2*T*C
// forward per token and layer, times 3 for backward), without discounting the causal mask (the PaLM
// / llm.c convention).
double training_flops_per_token(const ModelConfig& model, int64_t seq_len);

}  // namespace kiln
