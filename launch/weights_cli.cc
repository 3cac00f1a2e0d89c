// kiln export, kiln logits and kiln checkpoint: the commands that work on a model's saved weights
// (a checkpoint or Hugging Face safetensors) without training.
#include "launch/weights_cli.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "launch/checkpoint.h"
#include "launch/checkpoint_manifest.h"
#include "launch/config.h"
#include "launch/hf_mapping.h"
#include "launch/safetensors.h"
#include "launch/tokenizer_files.h"
#include "models/model.h"

namespace kiln::launch {
namespace {

bool flag_value(int argc, char** argv, int* i, const char* flag, std::string* out,
                std::string* err) {
  const std::string s = argv[*i], f = flag;
  if (s.rfind(f + "=", 0) == 0) {
    *out = s.substr(f.size() + 1);
    return true;
  }
  if (s != f) return false;
  if (*i + 1 >= argc) {
    *err = f + " needs a value";
    return true;
  }
  *out = argv[++*i];
  return true;
}

bool is_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

absl::Status write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  if (!f.flush()) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

int fail(const char* cmd, const absl::Status& s) {
  std::fprintf(stderr, "kiln %s: %s\n", cmd, std::string(s.message()).c_str());
  return 1;
}

// (B, T) token ids from "1 2 3,4 5 6" (rows separated by ',' or ';').
absl::StatusOr<Tensor> parse_tokens(const std::string& text, int64_t vocab) {
  std::vector<std::vector<int64_t>> rows;
  for (absl::string_view row :
       absl::StrSplit(text, absl::ByAnyChar(",;"), absl::SkipWhitespace())) {
    rows.emplace_back();
    for (absl::string_view tok : absl::StrSplit(row, absl::ByAnyChar(" \t\n"), absl::SkipEmpty())) {
      int64_t id;
      if (!absl::SimpleAtoi(tok, &id) || id < 0 || id >= vocab)
        return absl::InvalidArgumentError(
            absl::StrCat("--tokens: '", tok, "' is not a token id in [0, ", vocab, ")"));
      rows.back().push_back(id);
    }
  }
  if (rows.empty() || rows[0].empty()) return absl::InvalidArgumentError("--tokens: no tokens");
  std::vector<int64_t> flat;
  for (const auto& r : rows) {
    if (r.size() != rows[0].size())
      return absl::InvalidArgumentError("--tokens: every row needs the same length");
    flat.insert(flat.end(), r.begin(), r.end());
  }
  return Tensor::from_ints(
      flat, {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size())}, DType::kI32);
}

// Arguments of `kiln logits`.
struct LogitsArgs {
  std::string ckpt, config, init_from, tokens, out;
  std::vector<std::string> sets;
};

// Parses `kiln logits` arguments into `a`; returns "" or what is wrong.
std::string parse_logits_args(int argc, char** argv, LogitsArgs* a) {
  std::string err, set;
  for (int i = 1; i < argc && err.empty(); ++i) {
    if (flag_value(argc, argv, &i, "--checkpoint", &a->ckpt, &err) ||
        flag_value(argc, argv, &i, "--config", &a->config, &err) ||
        flag_value(argc, argv, &i, "--init-from", &a->init_from, &err) ||
        flag_value(argc, argv, &i, "--tokens", &a->tokens, &err) ||
        flag_value(argc, argv, &i, "--out", &a->out, &err))
      continue;
    if (flag_value(argc, argv, &i, "--set", &set, &err)) {
      a->sets.push_back(set);
      continue;
    }
    err = std::string("unknown argument '") + argv[i] + "'";
  }
  if (err.empty() && a->ckpt.empty() == a->config.empty())
    err = "give exactly one of --checkpoint and --config";
  if (err.empty() && a->tokens.empty()) err = "--tokens is required";
  return err;
}

// The model (in eval mode) of a checkpoint, with its weights, or of a config, with its seeded
// initialisation or the Hugging Face weights of --init-from. `cfg` receives the config.
absl::StatusOr<std::unique_ptr<models::LanguageModel>> load_model(const LogitsArgs& a,
                                                                  TrainConfig* cfg) {
  std::string path;
  Manifest manifest;
  if (!a.ckpt.empty()) {
    absl::StatusOr<std::string> p = resolve_checkpoint(a.ckpt, "--checkpoint: ");
    if (!p.ok()) return p.status();
    path = *p;
    absl::StatusOr<Manifest> m = read_checkpoint_manifest(path);
    if (!m.ok()) return m.status();
    manifest = *m;
    *cfg = m->config();
  } else {
    absl::StatusOr<TrainConfig> c = load_config(a.config, a.sets);
    if (!c.ok()) return c.status();
    *cfg = *c;
  }
  std::unique_ptr<models::LanguageModel> model =
      models::build_model(models::spec_from_config(cfg->model()), cfg->training().seed());
  model->set_training(false);
  std::vector<nn::Parameter> params = model->parameters();
  absl::Status s;
  if (!path.empty()) {
    std::vector<parallel::Piece> want;
    NoGradGuard ng;
    for (const nn::Parameter& p : params)
      want.push_back({p.name, p.tensor.shape(), 0, p.tensor.reshape({p.tensor.numel()})});
    s = read_checkpoint_pieces(path, manifest, want);
  } else if (!a.init_from.empty()) {
    s = import_safetensors(a.init_from, cfg->model(), params);
  }
  if (!s.ok()) return s;
  return model;
}

// Writes the logits and token ids to safetensors file `out`, or prints a summary when it is "".
absl::Status write_logits(const Tensor& logits, const Tensor& ids, const std::string& out) {
  if (out.empty()) {
    const std::vector<double> v = logits.to_vector();
    std::printf("logits %s; first values:", shape_str(logits.shape()).c_str());
    for (size_t k = 0; k < std::min<size_t>(8, v.size()); ++k) std::printf(" %.6g", v[k]);
    std::printf("\n");
    return absl::OkStatus();
  }
  Tensor ids64 = raw::convert(ids, DType::kI64);
  absl::Status s = write_safetensors(
      out,
      {{"logits", "F32", logits.shape(),
        std::string_view(static_cast<const char*>(logits.raw()), logits.nbytes())},
       {"tokens", "I64", ids64.shape(),
        std::string_view(static_cast<const char*>(ids64.raw()), ids64.nbytes())}},
      {{"format", "pt"}});
  if (!s.ok()) return s;
  std::printf("kiln logits: %s logits -> %s\n", shape_str(logits.shape()).c_str(), out.c_str());
  return absl::OkStatus();
}

// The tokenizer `kiln export` writes: --tokenizer DIR, else the run's (data.tokenizer_dir, GPT-2's
// when unset for shard data). Sets *eot from it; clears *dir when there is none to write.
absl::Status choose_export_tokenizer(const Manifest& m, bool given, std::string* dir,
                                     int64_t* eot) {
  bool named = false;
  if (!given) *dir = run_tokenizer_dir(m.config().data(), &named);
  if (dir->empty()) return absl::OkStatus();
  absl::StatusOr<data::Tokenizer> tok = data::Tokenizer::LoadDir(*dir);
  if (!tok.ok()) return tok.status();
  const int64_t vocab = m.config().model().vocab_size();
  if (!given && !named && tok->vocab_size() > vocab) {
    // GPT-2's tokenizer is only the default guess: shards of a smaller vocabulary came from
    // another tokenizer, so writing this one would be wrong. A named one that does not fit is
    // an error (write_hf_tokenizer).
    std::fprintf(stderr,
                 "kiln export: warning: GPT-2's tokenizer (%lld tokens; data.tokenizer_dir is "
                 "unset) does not fit model.vocab_size %lld: no tokenizer written; --tokenizer "
                 "DIR adds one\n",
                 static_cast<long long>(tok->vocab_size()), static_cast<long long>(vocab));
    dir->clear();
    return absl::OkStatus();
  }
  *eot = tok->eot();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> resolve_checkpoint(const std::string& path, const std::string& prefix) {
  CheckpointConfig c;
  c.set_resume(path);
  absl::StatusOr<std::string> r = find_resume_checkpoint(c, prefix);
  if (r.ok() && r->empty())
    return absl::NotFoundError(absl::StrCat(prefix, "no checkpoint at ", path));
  return r;
}

int export_main(int argc, char** argv) {
  if (is_help(argc, argv)) {
    std::printf(
        "usage: kiln export --checkpoint PATH --out DIR [--dtype fp32|bf16] [--tokenizer DIR]\n"
        "                   [--format safetensors]\n\n"
        "Writes a checkpoint's weights under Hugging Face names (GPT2LMHeadModel or\n"
        "LlamaForCausalLM) as DIR/model.safetensors, DIR/config.json (with bos/eos ids) and\n"
        "DIR/generation_config.json, plus the run's tokenizer as DIR/vocab.json, merges.txt,\n"
        "tokenizer_config.json and special_tokens_map.json, so that transformers'\n"
        "from_pretrained(DIR) loads model and tokenizer together. GPT-2 Conv1D weights are\n"
        "transposed; vocabulary padding rows are dropped. `kiln train --init-from DIR` reads such\n"
        "a directory back. Reads the checkpoint only; writes only under DIR.\n\n"
        "  --checkpoint PATH      a checkpoint directory (step_NNNNNNNN) or a checkpoint root\n"
        "                         (its `latest` is used)\n"
        "  --out DIR              output directory (created)\n"
        "  --dtype fp32|bf16      tensor dtype (default fp32; bf16 rounds to nearest even)\n"
        "  --tokenizer DIR        encoder.json + vocab.bpe to write (default: the checkpoint's\n"
        "                         data.tokenizer_dir, GPT-2's when unset for shard data; none\n"
        "                         for synthetic data: then only the model is written)\n"
        "  --format safetensors   the only format (no pickle)\n");
    return 0;
  }
  std::string format = "safetensors", dtype = "fp32", ckpt, out, tok_dir, err;
  bool tok_given = false;
  for (int i = 1; i < argc && err.empty(); ++i) {
    if (flag_value(argc, argv, &i, "--format", &format, &err) ||
        flag_value(argc, argv, &i, "--checkpoint", &ckpt, &err) ||
        flag_value(argc, argv, &i, "--dtype", &dtype, &err) ||
        flag_value(argc, argv, &i, "--out", &out, &err))
      continue;
    if (flag_value(argc, argv, &i, "--tokenizer", &tok_dir, &err)) {
      tok_given = true;
      continue;
    }
    err = std::string("unknown argument '") + argv[i] + "'";
  }
  if (err.empty() && format != "safetensors")
    err = "--format " + format + " is not supported (safetensors is)";
  if (err.empty() && dtype != "fp32" && dtype != "bf16")
    err = "--dtype " + dtype + ": fp32 or bf16";
  if (err.empty() && (ckpt.empty() || out.empty())) err = "--checkpoint and --out are required";
  if (!err.empty()) {
    std::fprintf(stderr, "kiln export: %s (see kiln export --help)\n", err.c_str());
    return 2;
  }
  absl::StatusOr<std::string> path = resolve_checkpoint(ckpt, "--checkpoint: ");
  if (!path.ok()) return fail("export", path.status());
  absl::StatusOr<Manifest> m = read_checkpoint_manifest(*path);
  if (!m.ok()) return fail("export", m.status());
  const ModelConfig& model = m->config().model();
  HfExportOptions opts;
  opts.bf16 = dtype == "bf16";
  if (absl::Status t = choose_export_tokenizer(*m, tok_given, &tok_dir, &opts.eot); !t.ok())
    return fail("export", t);
  absl::Status s = export_safetensors(*path, out, opts);
  if (s.ok() && !tok_dir.empty()) s = write_hf_tokenizer(tok_dir, model, out);
  if (s.ok())
    s = write_text(out + "/generation_config.json", hf_generation_config_json(model, opts.eot));
  if (!s.ok()) return fail("export", s);
  std::printf(
      "kiln export: %s -> %s (model.safetensors %s, config.json, generation_config.json%s)\n",
      path->c_str(), out.c_str(), dtype.c_str(),
      tok_dir.empty() ? "; no tokenizer: --tokenizer DIR adds one"
                      : (", tokenizer of " + tok_dir).c_str());
  return 0;
}

int logits_main(int argc, char** argv) {
  if (is_help(argc, argv)) {
    std::printf(
        "usage: kiln logits (--checkpoint PATH | --config FILE [--set a.b=V ...] [--init-from "
        "DIR])\n"
        "                   --tokens \"ID ID ...[, ID ID ...]\" [--out FILE.safetensors]\n\n"
        "Debugging aid: runs the model forward in fp32 on the CPU for the given token rows and\n"
        "writes the logits (B, T, vocab_size; vocabulary padding dropped) as tensor \"logits\"\n"
        "(and the ids as \"tokens\") to a safetensors file, or prints a summary without --out.\n"
        "Weights come from a checkpoint, from Hugging Face-named safetensors (--init-from), or\n"
        "from the config's seeded initialisation.\n");
    return 0;
  }
  LogitsArgs a;
  if (std::string err = parse_logits_args(argc, argv, &a); !err.empty()) {
    std::fprintf(stderr, "kiln logits: %s (see kiln logits --help)\n", err.c_str());
    return 2;
  }
  TrainConfig cfg;
  absl::StatusOr<std::unique_ptr<models::LanguageModel>> model = load_model(a, &cfg);
  if (!model.ok()) return fail("logits", model.status());
  const ModelConfig& mc = cfg.model();
  absl::StatusOr<Tensor> ids = parse_tokens(a.tokens, mc.vocab_size());
  if (!ids.ok()) return fail("logits", ids.status());
  if (ids->size(1) > mc.max_seq_len())
    return fail("logits", absl::InvalidArgumentError(
                              absl::StrCat("--tokens: rows of ", ids->size(1),
                                           " exceed model.max_seq_len ", mc.max_seq_len())));
  NoGradGuard ng;
  Tensor logits = (*model)->forward(*ids);
  logits = raw::contiguous(raw::convert(logits.narrow(2, 0, mc.vocab_size()), DType::kF32));
  if (absl::Status s = write_logits(logits, *ids, a.out); !s.ok()) return fail("logits", s);
  return 0;
}

namespace {

void print_checkpoint_usage() {
  std::printf(
      "usage: kiln checkpoint info|verify|hash PATH [PATH ...]\n\n"
      "  info    step, tokens, layout, tensors and files of a checkpoint\n"
      "  verify  reads every stored piece and checks its CRC32C (exit status 1 on any error)\n"
      "  hash    CRC32C of every whole tensor (assembled from its pieces: independent of the\n"
      "          layout that wrote it), and of all of them together\n"
      "PATH is a checkpoint directory (step_NNNNNNNN) or a checkpoint root (its `latest`).\n");
}

}  // namespace

int checkpoint_main(int argc, char** argv) {
  const std::string sub = argc > 1 ? argv[1] : "";
  if (sub.empty() || is_help(argc, argv)) {
    print_checkpoint_usage();
    return sub.empty() ? 2 : 0;
  }
  if (sub != "info" && sub != "verify" && sub != "hash") {
    std::fprintf(stderr,
                 "kiln checkpoint: unknown command '%s': info, verify or hash (see kiln "
                 "checkpoint --help)\n",
                 sub.c_str());
    return 2;
  }
  if (argc < 3) {
    std::fprintf(stderr, "kiln checkpoint %s: PATH is required (see kiln checkpoint --help)\n",
                 sub.c_str());
    return 2;
  }
  int rc = 0;
  for (int i = 2; i < argc; ++i) {
    absl::StatusOr<std::string> path = resolve_checkpoint(argv[i], "");
    absl::StatusOr<Manifest> m =
        path.ok() ? read_checkpoint_manifest(*path) : absl::StatusOr<Manifest>(path.status());
    if (!m.ok()) {
      rc = fail("checkpoint", m.status());
      continue;
    }
    if (sub == "info") {
      int64_t bytes = 0;
      std::set<std::string> names;
      for (const TensorEntry& e : m->tensors()) {
        bytes += e.shard_length() * 4;
        names.insert(e.name());
      }
      const ParallelLayout& l = m->layout();
      std::printf(
          "%s: step %lld, %lld tokens, layout world %d (dp %d tp %d pp %d, zero %d), %zu tensors "
          "in %d pieces, %d files, %.1f MiB\n",
          path->c_str(), static_cast<long long>(m->step()),
          static_cast<long long>(m->tokens_seen()), l.world_size(), l.dp(), l.tp(), l.pp(),
          l.zero_stage(), names.size(), m->tensors_size(), m->files_size(), bytes / 1048576.0);
    } else if (sub == "verify") {
      absl::Status s = verify_checkpoint(*path, *m);
      if (!s.ok()) {
        rc = fail("checkpoint", s);
        continue;
      }
      std::printf("%s: ok (step %lld, %d pieces verified)\n", path->c_str(),
                  static_cast<long long>(m->step()), m->tensors_size());
    } else {
      std::set<std::string> names;
      for (const TensorEntry& e : m->tensors()) names.insert(e.name());
      uint32_t total = 0;
      for (const std::string& name : names) {
        absl::StatusOr<Tensor> t = read_full_tensor(*path, *m, name);
        if (!t.ok()) {
          rc = fail("checkpoint", t.status());
          break;
        }
        const uint32_t crc = crc32c_update(0, t->raw(), t->nbytes());
        total = crc32c_update(total, name.data(), name.size());
        total = crc32c_update(total, t->raw(), t->nbytes());
        std::printf("%08x %s\n", crc, name.c_str());
      }
      std::printf("%08x TOTAL step %lld\n", total, static_cast<long long>(m->step()));
    }
  }
  return rc;
}

}  // namespace kiln::launch
