// Model presets and their resolution, parameter counts and FLOPs per token (see presets.h for the
// formulas).
#include "models/presets.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kiln {
namespace {

struct Shape {
  const char* name;
  ModelConfig::Family family;
  int n_layer, n_head;
  int n_kv_head;  // 0: left unset, so that it follows n_head (multi-head attention)
  int d_model;
  int d_ff;  // 0: left unset, so that it follows d_model (the family default)
  int vocab_size, max_seq_len;
  double rope_theta;  // 0 for GPT2
  double norm_eps;
  bool tied;
};

// Published shapes. GPT-2: Radford et al. 2019 / the released checkpoints (n_ctx 1024, vocab
// 50257). llama-1b: TinyLlama-1.1B (Llama-2 architecture, 1,100,048,384 parameters). llama-8b:
// Llama-3-8B (8,030,261,248 parameters). The tiny ones train in seconds on a CPU.
constexpr ModelConfig::Family kGpt2 = ModelConfig::GPT2;
constexpr ModelConfig::Family kLlama = ModelConfig::LLAMA;
constexpr Shape kShapes[] = {
    {"gpt2-tiny", kGpt2, 2, 2, 0, 64, 0, 50257, 64, 0, 1e-5, true},
    {"gpt2-124m", kGpt2, 12, 12, 0, 768, 0, 50257, 1024, 0, 1e-5, true},
    {"gpt2-350m", kGpt2, 24, 16, 0, 1024, 0, 50257, 1024, 0, 1e-5, true},
    {"gpt2-774m", kGpt2, 36, 20, 0, 1280, 0, 50257, 1024, 0, 1e-5, true},
    {"gpt2-1.5b", kGpt2, 48, 25, 0, 1600, 0, 50257, 1024, 0, 1e-5, true},
    {"llama-tiny", kLlama, 2, 4, 2, 64, 176, 50257, 64, 10000, 1e-5, false},
    {"llama-1b", kLlama, 22, 32, 4, 2048, 5632, 32000, 2048, 10000, 1e-5, false},
    {"llama-8b", kLlama, 32, 32, 8, 4096, 14336, 128256, 8192, 500000, 1e-5, false},
};

ModelConfig from_shape(const Shape& s) {
  ModelConfig m;
  m.set_preset(s.name);
  m.set_family(s.family);
  m.set_n_layer(s.n_layer);
  m.set_n_head(s.n_head);
  if (s.n_kv_head > 0) m.set_n_kv_head(s.n_kv_head);
  m.set_d_model(s.d_model);
  if (s.d_ff > 0) m.set_d_ff(s.d_ff);
  m.set_vocab_size(s.vocab_size);
  m.set_max_seq_len(s.max_seq_len);
  if (s.rope_theta > 0) m.set_rope_theta(s.rope_theta);
  m.set_norm_eps(s.norm_eps);
  m.set_tied_embeddings(s.tied);
  return m;
}

// Copies every field set in `from` that is not set in `to`.
void fill_unset(const ModelConfig& from, ModelConfig* to) {
  ModelConfig merged = from;
  merged.MergeFrom(
      *to);  // proto3 optional: present fields of *to overwrite; absent ones keep `from`'s.
  if (to->family() == ModelConfig::FAMILY_UNSPECIFIED) merged.set_family(from.family());
  *to = merged;
}

int64_t norm_params(const ModelConfig& m) {
  const int64_t c = m.d_model();
  if (m.family() == ModelConfig::LLAMA) return c;  // RMSNorm gain
  return m.bias() ? 2 * c : c;                     // LayerNorm gain (+ bias)
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Shape& s : kShapes) names.emplace_back(s.name);
  return names;
}

absl::StatusOr<ModelConfig> get_preset(std::string_view name) {
  for (const Shape& s : kShapes) {
    if (name == s.name) return from_shape(s);
  }
  return absl::NotFoundError(
      absl::StrCat("model.preset: unknown preset '", std::string(name),
                   "'; known presets: ", absl::StrJoin(preset_names(), ", ")));
}

int default_ffn_dim(ModelConfig::Family family, int d_model) {
  if (family == ModelConfig::LLAMA) {
    const int hidden = 8 * d_model / 3;
    return 256 * ((hidden + 255) / 256);
  }
  return 4 * d_model;
}

absl::Status resolve_model_config(ModelConfig* m) {
  if (!m->preset().empty()) {
    absl::StatusOr<ModelConfig> preset = get_preset(m->preset());
    if (!preset.ok()) return preset.status();
    if (m->family() != ModelConfig::FAMILY_UNSPECIFIED && m->family() != preset->family()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model.family: ", ModelConfig::Family_Name(m->family()), " conflicts with preset '",
          m->preset(), "' (", ModelConfig::Family_Name(preset->family()), ")"));
    }
    fill_unset(*preset, m);  // an explicit d_ff of 0 stays 0 and becomes the family default below
  }
  if (m->family() == ModelConfig::FAMILY_UNSPECIFIED) {
    return absl::InvalidArgumentError("model.family: not set; set model.preset (one of " +
                                      absl::StrJoin(preset_names(), ", ") +
                                      ") or model.family (GPT2 or LLAMA) with the shape fields");
  }
  const bool llama = m->family() == ModelConfig::LLAMA;
  const char* missing = !m->has_n_layer()       ? "n_layer"
                        : !m->has_n_head()      ? "n_head"
                        : !m->has_d_model()     ? "d_model"
                        : !m->has_max_seq_len() ? "max_seq_len"
                                                : nullptr;
  if (missing != nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.", missing, ": not set and no model.preset gives it"));
  }
  if (!m->has_n_kv_head()) m->set_n_kv_head(m->n_head());
  if (!m->has_d_ff() || m->d_ff() == 0) m->set_d_ff(default_ffn_dim(m->family(), m->d_model()));
  if (!m->has_vocab_size()) m->set_vocab_size(50257);
  if (llama && !m->has_rope_theta()) m->set_rope_theta(10000.0);
  if (!m->has_norm_eps()) m->set_norm_eps(1e-5);
  if (!m->has_tied_embeddings()) m->set_tied_embeddings(!llama);
  if (!m->has_dropout()) m->set_dropout(0.0);
  if (!m->has_init_std()) m->set_init_std(0.02);
  if (!m->has_scale_residual_init()) m->set_scale_residual_init(true);
  if (!m->has_bias()) m->set_bias(!llama);
  if (!m->has_vocab_pad_multiple()) m->set_vocab_pad_multiple(1);
  return absl::OkStatus();
}

int64_t padded_vocab_size(const ModelConfig& m) {
  const int64_t mult = m.vocab_pad_multiple() > 0 ? m.vocab_pad_multiple() : 1;
  return (static_cast<int64_t>(m.vocab_size()) + mult - 1) / mult * mult;
}

ParamCounts count_params(const ModelConfig& m) {
  const bool llama = m.family() == ModelConfig::LLAMA;
  const int64_t v = padded_vocab_size(m), c = m.d_model(), f = m.d_ff();
  const int64_t kv = m.n_head() > 0 ? static_cast<int64_t>(m.n_kv_head()) * (c / m.n_head()) : 0;
  const int64_t b = m.bias() ? 1 : 0;
  const int64_t norm = norm_params(m);
  ParamCounts p;
  p.token_embedding = v * c;
  p.position_embedding = llama ? 0 : static_cast<int64_t>(m.max_seq_len()) * c;
  const int64_t attention = c * (c + 2 * kv) + c * c + b * (c + 2 * kv + c);
  const int64_t mlp = (llama ? 3 : 2) * c * f + b * (f + c);
  p.per_block = attention + mlp + 2 * norm;
  p.blocks = p.per_block * m.n_layer();
  p.final_norm = norm;
  p.head = m.tied_embeddings() ? 0 : v * c;
  p.total = p.token_embedding + p.position_embedding + p.blocks + p.final_norm + p.head;
  p.matmul = p.total - p.position_embedding - (m.tied_embeddings() ? 0 : p.token_embedding);
  return p;
}

int64_t param_count(const ModelConfig& m) { return count_params(m).total; }

double training_flops_per_token(const ModelConfig& m, int64_t seq_len) {
  const double n = static_cast<double>(count_params(m).matmul);
  return 6.0 * n + 12.0 * m.n_layer() * static_cast<double>(m.d_model()) * seq_len;
}

}  // namespace kiln
