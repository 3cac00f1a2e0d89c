// Hugging Face interchange: the name and shape mapping, config.json, export and import (see
// hf_mapping.h).
#include "launch/hf_mapping.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/json.h"
#include "core/ops/elementwise.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/safetensors.h"

namespace kiln::launch {
namespace fs = std::filesystem;
namespace {

bool is_gpt2(const ModelConfig& m) { return m.family() != ModelConfig::LLAMA; }

// Shortest text that reads back as the same double.
std::string num(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";  // a float, not an int
  return s;
}

// Transformer weights whose transformers layout is the transpose of kiln's (GPT-2's Conv1D).
bool conv1d(const std::string& kiln_name) {
  for (const char* s :
       {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"}) {
    const size_t n = std::strlen(s);
    if (kiln_name.size() > n && kiln_name.compare(kiln_name.size() - n, n, s) == 0) return true;
  }
  return false;
}

absl::Status write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out.flush()) return absl::UnavailableError("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    return absl::UnavailableError("cannot rename " + tmp + " to " + path);
  return absl::OkStatus();
}

// An HF tensor's bytes as an f32 CPU tensor.
absl::StatusOr<Tensor> read_hf(SafetensorsReader& r, const SafetensorsEntry& e) {
  DType dt;
  if (e.dtype == "F32") {
    dt = DType::kF32;
  } else if (e.dtype == "BF16") {
    dt = DType::kBF16;
  } else if (e.dtype == "F16") {
    dt = DType::kF16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(r.path(), ": tensor '", e.name, "' is ", e.dtype,
                                                   " (F32, BF16 or F16 expected)"));
  }
  Tensor t = Tensor::empty(Shape(e.shape.begin(), e.shape.end()), dt);
  if (absl::Status s = r.read(e, t.raw()); !s.ok()) return s;
  return raw::convert(t, DType::kF32);
}

// config.json fields that must agree with the model (names per family).
absl::Status check_hf_config(const std::string& path, const ModelConfig& m) {
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  absl::StatusOr<JsonValue> j = parse_json(text);
  if (!j.ok() || !j->is_object())
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a JSON object: ", j.ok() ? "" : j.status().message()));
  const bool gpt2 = is_gpt2(m);
  if (const JsonValue* t = j->find("model_type"); t && t->is_string()) {
    const std::string want = gpt2 ? "gpt2" : "llama";
    if (t->str != want)
      return absl::InvalidArgumentError(absl::StrCat(path, ": model_type is '", t->str,
                                                     "' but model.family is ",
                                                     ModelConfig::Family_Name(m.family())));
  }
  struct Field {
    const char* json;
    const char* ours;
    double value;
  };
  std::vector<Field> fields;
  if (gpt2) {
    fields = {{"vocab_size", "model.vocab_size", double(m.vocab_size())},
              {"n_positions", "model.max_seq_len", double(m.max_seq_len())},
              {"n_embd", "model.d_model", double(m.d_model())},
              {"n_layer", "model.n_layer", double(m.n_layer())},
              {"n_head", "model.n_head", double(m.n_head())},
              {"n_inner", "model.d_ff", double(m.d_ff())},
              {"layer_norm_epsilon", "model.norm_eps", m.norm_eps()}};
  } else {
    fields = {{"vocab_size", "model.vocab_size", double(m.vocab_size())},
              {"hidden_size", "model.d_model", double(m.d_model())},
              {"intermediate_size", "model.d_ff", double(m.d_ff())},
              {"num_hidden_layers", "model.n_layer", double(m.n_layer())},
              {"num_attention_heads", "model.n_head", double(m.n_head())},
              {"num_key_value_heads", "model.n_kv_head", double(m.n_kv_head())},
              {"rms_norm_eps", "model.norm_eps", m.norm_eps()},
              {"rope_theta", "model.rope_theta", m.rope_theta()}};
  }
  for (const Field& f : fields) {
    const JsonValue* v = j->find(f.json);
    if (!v || !v->is_number()) continue;  // absent or null: the family default
    if (v->number != f.value)
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", f.json, " is ", v->str, " but ", f.ours, " is ", f.value));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<HfTensor> hf_tensors(const ModelConfig& m) {
  const int64_t v = m.vocab_size(), c = m.d_model(), f = m.d_ff(), t = m.max_seq_len();
  const int64_t h = m.n_head(), kv = m.n_kv_head(), d = c / h;
  const bool bias = m.bias();
  std::vector<HfTensor> out;
  auto add = [&](std::string hf, std::string kiln, std::vector<int64_t> shape, bool has = true) {
    HfTensor x;
    x.hf_name = std::move(hf);
    x.kiln_name = has ? std::move(kiln) : "";
    x.transpose = has && conv1d(x.kiln_name);
    x.slice_vocab = x.kiln_name == "wte.weight" || x.kiln_name == "embed_tokens.weight" ||
                    x.kiln_name == "lm_head.weight";
    x.hf_shape = std::move(shape);
    out.push_back(std::move(x));
  };
  if (is_gpt2(m)) {
    auto tr = [&](const std::string& k, std::vector<int64_t> shape, bool has = true) {
      add("transformer." + k, k, std::move(shape), has);
    };
    tr("wte.weight", {v, c});
    tr("wpe.weight", {t, c});
    for (int i = 0; i < m.n_layer(); ++i) {
      const std::string p = absl::StrCat("h.", i, ".");
      tr(p + "ln_1.weight", {c});
      tr(p + "ln_1.bias", {c}, bias);
      tr(p + "attn.c_attn.weight", {c, 3 * c});
      tr(p + "attn.c_attn.bias", {3 * c}, bias);
      tr(p + "attn.c_proj.weight", {c, c});
      tr(p + "attn.c_proj.bias", {c}, bias);
      tr(p + "ln_2.weight", {c});
      tr(p + "ln_2.bias", {c}, bias);
      tr(p + "mlp.c_fc.weight", {c, f});
      tr(p + "mlp.c_fc.bias", {f}, bias);
      tr(p + "mlp.c_proj.weight", {f, c});
      tr(p + "mlp.c_proj.bias", {c}, bias);
    }
    tr("ln_f.weight", {c});
    tr("ln_f.bias", {c}, bias);
  } else {
    auto md = [&](const std::string& k, std::vector<int64_t> shape) {
      add("model." + k, k, std::move(shape));
    };
    md("embed_tokens.weight", {v, c});
    for (int i = 0; i < m.n_layer(); ++i) {
      const std::string p = absl::StrCat("layers.", i, ".");
      md(p + "input_layernorm.weight", {c});
      for (auto [name, rows] :
           {std::pair{"q_proj", h * d}, {"k_proj", kv * d}, {"v_proj", kv * d}}) {
        md(p + "self_attn." + name + ".weight", {rows, c});
        if (bias) md(p + "self_attn." + name + ".bias", {rows});
      }
      md(p + "self_attn.o_proj.weight", {c, h * d});
      if (bias) md(p + "self_attn.o_proj.bias", {c});
      md(p + "post_attention_layernorm.weight", {c});
      md(p + "mlp.gate_proj.weight", {f, c});
      if (bias) md(p + "mlp.gate_proj.bias", {f});
      md(p + "mlp.up_proj.weight", {f, c});
      if (bias) md(p + "mlp.up_proj.bias", {f});
      md(p + "mlp.down_proj.weight", {c, f});
      if (bias) md(p + "mlp.down_proj.bias", {c});
    }
    md("norm.weight", {c});
  }
  if (!m.tied_embeddings()) add("lm_head.weight", "lm_head.weight", {v, c});
  return out;
}

std::string hf_config_json(const ModelConfig& m, const HfExportOptions& opts) {
  std::vector<std::pair<std::string, std::string>> kv;
  auto i = [](int64_t x) { return absl::StrCat(x); };
  auto b = [](bool x) { return std::string(x ? "true" : "false"); };
  if (is_gpt2(m)) {
    kv = {{"architectures", "[\"GPT2LMHeadModel\"]"},
          {"model_type", "\"gpt2\""},
          {"vocab_size", i(m.vocab_size())},
          {"n_positions", i(m.max_seq_len())},
          {"n_ctx", i(m.max_seq_len())},
          {"n_embd", i(m.d_model())},
          {"n_layer", i(m.n_layer())},
          {"n_head", i(m.n_head())},
          {"n_inner", i(m.d_ff())},
          {"activation_function", "\"gelu_new\""},
          {"layer_norm_epsilon", num(m.norm_eps())},
          {"resid_pdrop", num(m.dropout())},
          {"embd_pdrop", num(m.dropout())},
          {"attn_pdrop", "0.0"},
          {"initializer_range", num(m.init_std())},
          {"scale_attn_weights", "true"},
          {"tie_word_embeddings", b(m.tied_embeddings())},
          {"use_cache", "true"}};
  } else {
    kv = {{"architectures", "[\"LlamaForCausalLM\"]"},
          {"model_type", "\"llama\""},
          {"vocab_size", i(m.vocab_size())},
          {"hidden_size", i(m.d_model())},
          {"intermediate_size", i(m.d_ff())},
          {"num_hidden_layers", i(m.n_layer())},
          {"num_attention_heads", i(m.n_head())},
          {"num_key_value_heads", i(m.n_kv_head())},
          {"head_dim", i(m.d_model() / m.n_head())},
          {"max_position_embeddings", i(m.max_seq_len())},
          {"rms_norm_eps", num(m.norm_eps())},
          {"rope_theta", num(m.rope_theta())},
          {"rope_scaling", "null"},
          {"hidden_act", "\"silu\""},
          {"attention_bias", b(m.bias())},
          {"mlp_bias", b(m.bias())},
          {"attention_dropout", "0.0"},
          {"initializer_range", num(m.init_std())},
          {"tie_word_embeddings", b(m.tied_embeddings())},
          {"use_cache", "true"}};
  }
  const int64_t eot = opts.eot >= 0 ? opts.eot : is_gpt2(m) && m.vocab_size() > 50256 ? 50256 : -1;
  if (eot >= 0) {
    kv.push_back({"bos_token_id", i(eot)});
    kv.push_back({"eos_token_id", i(eot)});
  }
  kv.push_back({"torch_dtype", opts.bf16 ? "\"bfloat16\"" : "\"float32\""});
  std::string out = "{\n";
  for (size_t k = 0; k < kv.size(); ++k)
    absl::StrAppend(&out, "  ", json_quote(kv[k].first), ": ", kv[k].second,
                    k + 1 < kv.size() ? ",\n" : "\n");
  return out + "}\n";
}

absl::Status export_safetensors(const std::string& checkpoint, const std::string& out_dir,
                                const HfExportOptions& opts) {
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(checkpoint);
  if (!m.ok()) return m.status();
  const ModelConfig& model = m->config().model();
  const std::vector<HfTensor> ts = hf_tensors(model);
  std::vector<SafetensorsTensor> specs;
  for (const HfTensor& t : ts)
    specs.push_back({t.hf_name, opts.bf16 ? "BF16" : "F32", t.hf_shape, {}});
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::UnavailableError("cannot create " + out_dir + ": " + ec.message());
  auto produce = [&](size_t k, std::string* bytes) -> absl::Status {
    const HfTensor& t = ts[k];
    const int64_t numel = shape_numel(t.hf_shape);
    if (t.kiln_name.empty()) {  // a bias GPT-2 always has and this model does not
      bytes->assign(static_cast<size_t>(numel) * (opts.bf16 ? 2 : 4), '\0');
      return absl::OkStatus();
    }
    absl::StatusOr<Tensor> full = read_full_tensor(checkpoint, *m, t.kiln_name);
    if (!full.ok()) return full.status();
    Tensor x = *full;
    if (t.slice_vocab) x = x.narrow(0, 0, t.hf_shape[0]);
    if (t.transpose) x = x.transpose(0, 1);
    x = raw::contiguous(x);
    if (opts.bf16) x = raw::convert(x, DType::kBF16);
    if (x.shape() != Shape(t.hf_shape.begin(), t.hf_shape.end()))
      return absl::InternalError(absl::StrCat("export: tensor ", t.kiln_name, " is ",
                                              shape_str(x.shape()), ", transformers expects ",
                                              shape_str(t.hf_shape)));
    bytes->assign(static_cast<const char*>(x.raw()), x.nbytes());
    return absl::OkStatus();
  };
  absl::Status s =
      write_safetensors(out_dir + "/model.safetensors", specs, {{"format", "pt"}}, produce);
  if (!s.ok()) return s;
  return write_text_file(out_dir + "/config.json", hf_config_json(model, opts));
}

absl::Status import_safetensors(const std::string& path, const ModelConfig& model,
                                const std::vector<nn::Parameter>& params, bool stage) {
  std::error_code ec;
  std::string file = path;
  if (fs::is_directory(path, ec)) {
    file = path + "/model.safetensors";
    if (fs::exists(path + "/config.json", ec)) {
      absl::Status s = check_hf_config(path + "/config.json", model);
      if (!s.ok()) return s;
    }
  }
  absl::StatusOr<std::unique_ptr<SafetensorsReader>> r = SafetensorsReader::open(file);
  if (!r.ok()) return r.status();
  std::map<std::string, const nn::Parameter*> by_name;
  for (const nn::Parameter& p : params) by_name[p.name] = &p;
  std::set<std::string> used, filled;
  NoGradGuard ng;
  for (const HfTensor& t : hf_tensors(model)) {
    const SafetensorsEntry* e = (*r)->header().find(t.hf_name);
    if (!e) {
      if (t.kiln_name.empty()) continue;
      return absl::NotFoundError(
          absl::StrCat(file, " has no tensor '", t.hf_name, "' (kiln's ", t.kiln_name, ")"));
    }
    used.insert(t.hf_name);
    if (e->shape != t.hf_shape)
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": tensor '", t.hf_name, "' is ",
                       shape_str(Shape(e->shape.begin(), e->shape.end())), " but this model needs ",
                       shape_str(t.hf_shape)));
    if (stage && !t.kiln_name.empty() && !by_name.count(t.kiln_name)) continue;  // another stage's
    absl::StatusOr<Tensor> x = read_hf(**r, *e);
    if (!x.ok()) return x.status();
    if (!std::isfinite(sum_squares(*x)))  // f64 sum of f32 squares: finite iff every value is
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": tensor '", t.hf_name, "' holds NaN or Inf values"));
    if (t.kiln_name.empty()) {
      for (double v : x->to_vector())
        if (v != 0)
          return absl::InvalidArgumentError(absl::StrCat(
              file, ": tensor '", t.hf_name, "' is a non-zero bias but model.bias is false"));
      continue;
    }
    auto it = by_name.find(t.kiln_name);
    if (it == by_name.end())
      return absl::InternalError("import: the model has no parameter " + t.kiln_name);
    const Tensor& dst = it->second->tensor;
    Tensor v = t.transpose ? raw::contiguous(x->transpose(0, 1)) : *x;
    if (t.slice_vocab) {
      Tensor padded = Tensor::zeros(dst.shape(), DType::kF32);
      raw::copy(padded.narrow(0, 0, v.size(0)), v);
      v = padded;
    }
    if (v.shape() != dst.shape())
      return absl::InternalError(absl::StrCat("import: ", t.kiln_name, " is ",
                                              shape_str(dst.shape()), ", mapped ",
                                              shape_str(v.shape())));
    raw::copy(dst, v);
    filled.insert(t.kiln_name);
  }
  for (const SafetensorsEntry& e : (*r)->header().tensors) {
    if (used.count(e.name)) continue;
    const bool gpt2_buffer = is_gpt2(model) && (absl::EndsWith(e.name, ".attn.bias") ||
                                                absl::EndsWith(e.name, ".attn.masked_bias"));
    const bool tied_head = model.tied_embeddings() && e.name == "lm_head.weight";
    if (gpt2_buffer || tied_head) continue;  // buffers and the tied head: nothing to load
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": tensor '", e.name, "' has no place in this model (",
                     ModelConfig::Family_Name(model.family()), ", n_layer ", model.n_layer(),
                     ", bias ", model.bias() ? "true" : "false", ", tied_embeddings ",
                     model.tied_embeddings() ? "true" : "false", ")"));
  }
  for (const nn::Parameter& p : params)
    if (!filled.count(p.name))
      return absl::InternalError("import: no Hugging Face tensor maps to " + p.name);
  return absl::OkStatus();
}

}  // namespace kiln::launch
