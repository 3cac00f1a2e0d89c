// The run's tokenizer and its Hugging Face files (see tokenizer_files.h).
#include "launch/tokenizer_files.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "data/cli.h"

namespace kiln::launch {
namespace fs = std::filesystem;
namespace {

absl::StatusOr<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

}  // namespace

std::string run_tokenizer_dir(const DataConfig& d, bool* explicit_dir) {
  *explicit_dir = d.has_tokenizer_dir();
  if (d.has_tokenizer_dir()) return d.tokenizer_dir();
  return d.synthetic() ? "" : data::default_tokenizer_dir();
}

absl::StatusOr<std::shared_ptr<data::Tokenizer>> load_run_tokenizer(const TrainConfig& cfg,
                                                                    bool say) {
  bool named = false;
  const std::string dir = run_tokenizer_dir(cfg.data(), &named);
  const std::string field = named ? "data.tokenizer_dir" : "data.tokenizer_dir (unset: GPT-2's)";
  auto warn = [&](const std::string& why) -> std::shared_ptr<data::Tokenizer> {
    if (say)
      std::fprintf(stderr, "kiln: warning: %s%s: samples print token ids%s\n", why.c_str(),
                   field.c_str(),
                   cfg.eval().sample_prompt().empty() ? "" : " and eval.sample_prompt is not used");
    return nullptr;
  };
  if (dir.empty()) return cfg.eval().sample_prompt().empty() ? nullptr : warn("no tokenizer, ");
  absl::StatusOr<data::Tokenizer> tok = data::Tokenizer::LoadDir(dir);
  if (!tok.ok()) return warn(absl::StrCat(tok.status().message(), "; "));
  const int64_t v = cfg.model().vocab_size(), n = tok->vocab_size();
  if (n > v) {
    const std::string msg = absl::StrCat("model.vocab_size ", v, " is smaller than the ", n,
                                         " tokens of the tokenizer in ", dir, " (", field, ")");
    if (named) return absl::InvalidArgumentError(msg + ": its ids would be out of range");
    return warn(msg + "; set data.tokenizer_dir to the tokenizer of the shards, or \"\"; ");
  }
  if (n < v && say)
    std::printf(
        "kiln: model.vocab_size %lld > the tokenizer's %lld tokens (%s): ids %lld..%lld "
        "are padding rows the data never holds (normal, e.g. 50304 for GPT-2)\n",
        static_cast<long long>(v), static_cast<long long>(n), dir.c_str(),
        static_cast<long long>(n), static_cast<long long>(v - 1));
  return std::make_shared<data::Tokenizer>(std::move(*tok));
}

absl::Status write_hf_tokenizer(const std::string& dir, const ModelConfig& model,
                                const std::string& out_dir) {
  absl::StatusOr<data::Tokenizer> tok = data::Tokenizer::LoadDir(dir);
  if (!tok.ok()) return tok.status();
  if (tok->vocab_size() > model.vocab_size())
    return absl::InvalidArgumentError(
        absl::StrCat("the tokenizer in ", dir, " has ", tok->vocab_size(),
                     " tokens, more than model.vocab_size ", model.vocab_size()));
  absl::StatusOr<std::string> vocab = read_text(dir + "/encoder.json");
  absl::StatusOr<std::string> merges = read_text(dir + "/vocab.bpe");
  if (!vocab.ok()) return vocab.status();
  if (!merges.ok()) return merges.status();
  const std::string eot = tok->eot() >= 0 ? "\"<|endoftext|>\"" : "null";
  const std::string special = absl::StrCat("{\n  \"bos_token\": ", eot, ",\n  \"eos_token\": ", eot,
                                           ",\n  \"unk_token\": ", eot, "\n}\n");
  const std::string config = absl::StrCat(
      "{\n  \"tokenizer_class\": \"GPT2Tokenizer\",\n  \"model_max_length\": ", model.max_seq_len(),
      ",\n  \"add_prefix_space\": false,\n  \"errors\": \"replace\",\n  \"bos_token\": ", eot,
      ",\n  \"eos_token\": ", eot, ",\n  \"unk_token\": ", eot, "\n}\n");
  for (const auto& [name, text] : {std::pair<std::string, std::string>{"vocab.json", *vocab},
                                   {"merges.txt", *merges},
                                   {"special_tokens_map.json", special},
                                   {"tokenizer_config.json", config}})
    if (absl::Status s = write_text(out_dir + "/" + name, text); !s.ok()) return s;
  return absl::OkStatus();
}

std::string hf_generation_config_json(const ModelConfig& model, int64_t eot) {
  std::string ids;
  if (eot >= 0)
    ids = absl::StrCat("  \"bos_token_id\": ", eot, ",\n  \"eos_token_id\": ", eot, ",\n");
  return absl::StrCat("{\n", ids, "  \"max_length\": ", model.max_seq_len(), "\n}\n");
}

}  // namespace kiln::launch
