// Config loading: textproto parsing with located errors, reflection-based overrides, defaults,
// validation.
#include "launch/config.h"

#include <glob.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "models/presets.h"

namespace kiln {
namespace {

namespace pb = google::protobuf;

// ---------------------------------------------------------------------------------------------------------
// Names and suggestions

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// " (did you mean 'n_layer'?)" for the closest field name of `d`, or "" when none is close.
std::string Suggestion(const pb::Descriptor* d, const std::string& name) {
  std::string best;
  int best_dist = std::max<int>(2, static_cast<int>(name.size()) / 3) + 1;
  for (int i = 0; i < d->field_count(); ++i) {
    const int dist = EditDistance(name, d->field(i)->name());
    if (dist < best_dist) best_dist = dist, best = d->field(i)->name();
  }
  return best.empty() ? "" : absl::StrCat(" (did you mean '", best, "'?)");
}

std::string EnumNames(const pb::EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) {
    if (!absl::EndsWith(e->value(i)->name(), "_UNSPECIFIED")) names.push_back(e->value(i)->name());
  }
  return absl::StrJoin(names, ", ");
}

// The field at dotted `path` from `root`, or nullptr.
const pb::FieldDescriptor* FindFieldByPath(const pb::Descriptor* root, const std::string& path) {
  const pb::FieldDescriptor* f = nullptr;
  const pb::Descriptor* d = root;
  for (absl::string_view part : absl::StrSplit(path, '.')) {
    if (d == nullptr) return nullptr;
    f = d->FindFieldByName(std::string(part));
    if (f == nullptr) return nullptr;
    d = f->message_type();
  }
  return f;
}

// ---------------------------------------------------------------------------------------------------------
// Parse errors: FILE:LINE:COL: FIELD.PATH: message

struct ParseError {
  int line,
      column;  // 0-based, protobuf's tokenizer convention (tabs advance to the next multiple of 8)
  std::string message;
};

class Collector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    errors.push_back({line, column, message});
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  std::vector<ParseError> errors;
};

// The dotted path of the field being parsed at (line, column) of textproto `text`: a small scan
// that tracks message nesting ("a { b: 1 }") and the latest field name, good enough to name the
// field in an error.
std::string FieldPathAt(const std::string& text, int line, int column) {
  std::vector<std::string> stack;
  std::string field;
  bool expect_field = true;
  int list_depth = 0;
  int l = 0, c = 0;
  size_t i = 0;
  auto advance = [&](size_t n) {
    for (size_t k = 0; k < n && i < text.size(); ++k, ++i) {
      if (text[i] == '\n') {
        ++l, c = 0;
      } else if (text[i] == '\t') {
        c += 8 - c % 8;
      } else {
        ++c;
      }
    }
  };
  while (i < text.size()) {
    if (l > line || (l == line && c > column)) break;
    const char ch = text[i];
    if (std::isspace(static_cast<unsigned char>(ch))) {
      advance(1);
    } else if (ch == '#') {
      while (i < text.size() && text[i] != '\n') advance(1);
    } else if (ch == '"' || ch == '\'') {
      size_t j = i + 1;
      while (j < text.size() && text[j] != ch && text[j] != '\n') j += text[j] == '\\' ? 2 : 1;
      advance(j + 1 - i);
      if (list_depth == 0) expect_field = true;
    } else if (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' ||
               ch == '-') {
      size_t j = i;
      while (j < text.size() &&
             (std::isalnum(static_cast<unsigned char>(text[j])) || text[j] == '_' ||
              text[j] == '.' || text[j] == '-' || text[j] == '+')) {
        ++j;
      }
      const std::string token = text.substr(i, j - i);
      const bool ident = std::isalpha(static_cast<unsigned char>(ch)) || ch == '_';
      if (expect_field && ident && list_depth == 0) {
        field = token;
        expect_field = false;
      } else if (list_depth == 0) {
        expect_field = true;  // a value ends the field
      }
      advance(j - i);
    } else {
      if (ch == '{' || ch == '<') {
        stack.push_back(field);
        field.clear();
        expect_field = true;
      } else if (ch == '}' || ch == '>') {
        if (!stack.empty()) stack.pop_back();
        field.clear();
        expect_field = true;
      } else if (ch == '[') {
        ++list_depth;
      } else if (ch == ']') {
        if (list_depth > 0 && --list_depth == 0) expect_field = true;
      } else if ((ch == ',' || ch == ';') && list_depth == 0) {
        expect_field = true;
      }
      advance(1);
    }
  }
  if (!field.empty()) stack.push_back(field);
  return absl::StrJoin(stack, ".");
}

// Byte offset of protobuf's (line, column) in `text`, and back (tabs advance to the next multiple
// of 8).
size_t OffsetAt(const std::string& text, int line, int column) {
  size_t i = 0;
  for (int l = 0; l < line && i < text.size(); ++i) {
    if (text[i] == '\n') ++l;
  }
  for (int c = 0; i < text.size() && text[i] != '\n' && c < column; ++i) {
    c = text[i] == '\t' ? c + 8 - c % 8 : c + 1;
  }
  return i;
}

void PositionAt(const std::string& text, size_t offset, int* line, int* column) {
  *line = 0, *column = 0;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++*line, *column = 0;
    } else {
      *column = text[i] == '\t' ? *column + 8 - *column % 8 : *column + 1;
    }
  }
}

// The field a protobuf parser message names ('field "x"', 'field named "x"'), or "".
std::string FieldNamedIn(const std::string& message) {
  for (const char* key : {"field named \"", "field \""}) {
    const size_t k = message.find(key);
    if (k == std::string::npos) continue;
    const size_t a = k + std::strlen(key);
    const size_t b = message.find('"', a);
    if (b != std::string::npos) return message.substr(a, b - a);
  }
  return "";
}

// Protobuf reports some errors at the token after the offending one (the ':' after an unknown field
// name, the '}' after a bad enum value). When the message names the field, move (line, column) back
// to that name's last occurrence as a whole word before the reported position.
void PointAtNamedField(const std::string& text, const std::string& message, int* line,
                       int* column) {
  const std::string name = FieldNamedIn(message);
  if (name.empty()) return;
  auto is_word = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; };
  size_t end = OffsetAt(text, *line, *column);
  while (end > 0) {
    const size_t at = text.rfind(name, end - 1);
    if (at == std::string::npos) return;
    const bool starts = at == 0 || !is_word(text[at - 1]);
    const bool ends = at + name.size() >= text.size() || !is_word(text[at + name.size()]);
    if (starts && ends) {
      PositionAt(text, at, line, column);
      return;
    }
    end = at;
  }
}

// Adds a suggestion or the allowed enum names to a protobuf parser message.
std::string Explain(const std::string& message, const std::string& path) {
  static constexpr char kNoField[] = "has no field named \"";
  static constexpr char kType[] = "Message type \"";
  const size_t nf = message.find(kNoField), ty = message.find(kType);
  if (nf != std::string::npos && ty != std::string::npos) {
    const size_t a = ty + sizeof(kType) - 1, b = nf + sizeof(kNoField) - 1;
    const std::string type = message.substr(a, message.find('"', a) - a);
    const std::string name = message.substr(b, message.find('"', b) - b);
    const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
    if (d != nullptr) return message + Suggestion(d, name);
  }
  if (absl::EndsWith(message, "got: ")) return message + "end of file (a '{' without its '}'?)";
  if (absl::StrContains(message, "Unknown enumeration value")) {
    const pb::FieldDescriptor* f = FindFieldByPath(TrainConfig::descriptor(), path);
    if (f != nullptr && f->enum_type() != nullptr) {
      return absl::StrCat(message, " Expected one of: ", EnumNames(f->enum_type()), ".");
    }
  }
  return message;
}

// ---------------------------------------------------------------------------------------------------------
// Overrides

std::string OverrideError(const std::string& assignment, const std::string& what) {
  return absl::StrCat("--set ", assignment, ": ", what);
}

absl::Status SetScalar(pb::Message* msg, const pb::FieldDescriptor* f, std::string value,
                       const std::string& path, const std::string& assignment) {
  const pb::Reflection* r = msg->GetReflection();
  const bool rep = f->is_repeated();
  value = std::string(absl::StripAsciiWhitespace(value));
  auto bad = [&](const std::string& expected) {
    return absl::InvalidArgumentError(OverrideError(
        assignment, absl::StrCat(path, ": expected ", expected, ", got '", value, "'")));
  };
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("a 32-bit integer");
      rep ? r->AddInt32(msg, f, v) : r->SetInt32(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("an integer");
      rep ? r->AddInt64(msg, f, v) : r->SetInt64(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("a non-negative 32-bit integer");
      rep ? r->AddUInt32(msg, f, v) : r->SetUInt32(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!absl::SimpleAtoi(value, &v)) return bad("a non-negative integer");
      rep ? r->AddUInt64(msg, f, v) : r->SetUInt64(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!absl::SimpleAtod(value, &v)) return bad("a number");
      rep ? r->AddDouble(msg, f, v) : r->SetDouble(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      float v;
      if (!absl::SimpleAtof(value, &v)) return bad("a number");
      rep ? r->AddFloat(msg, f, v) : r->SetFloat(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      const std::string lower = absl::AsciiStrToLower(value);
      bool v;
      if (lower == "true" || lower == "1") {
        v = true;
      } else if (lower == "false" || lower == "0") {
        v = false;
      } else {
        return bad("true or false");
      }
      rep ? r->AddBool(msg, f, v) : r->SetBool(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* ev =
          f->enum_type()->FindValueByName(absl::AsciiStrToUpper(value));
      if (ev == nullptr) return bad(absl::StrCat("one of ", EnumNames(f->enum_type())));
      rep ? r->AddEnum(msg, f, ev) : r->SetEnum(msg, f, ev);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
          value.back() == value.front()) {
        value = value.substr(1, value.size() - 2);
      }
      rep ? r->AddString(msg, f, value) : r->SetString(msg, f, value);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
      std::string body = value;
      if (body.size() >= 2 && body.front() == '{' && body.back() == '}') {
        body = body.substr(1, body.size() - 2);
      }
      pb::Message* sub = rep ? r->AddMessage(msg, f) : r->MutableMessage(msg, f);
      Collector errors;
      pb::TextFormat::Parser parser;
      parser.RecordErrorsTo(&errors);
      if (!parser.MergeFromString(body, sub)) {
        std::vector<std::string> lines;
        for (const ParseError& e : errors.errors) {
          lines.push_back(absl::StrCat("column ", e.column + 1, ": ", Explain(e.message, "")));
        }
        return absl::InvalidArgumentError(OverrideError(assignment, absl::StrJoin(lines, "; ")));
      }
      break;
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// Validation

bool GlobMatches(const std::string& pattern) {
  glob_t g;
  const int rc = glob(pattern.c_str(), 0, nullptr, &g);
  const bool any = rc == 0 && g.gl_pathc > 0;
  globfree(&g);
  return any;
}

class Checker {
 public:
  // Adds "field: reason" when `ok` is false.
  void Require(bool ok, const std::string& field, const std::string& reason) {
    if (!ok) errors_.push_back(absl::StrCat(field, ": ", reason));
  }
  absl::Status status() const {
    if (errors_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
  }

 private:
  std::vector<std::string> errors_;
};

std::string Num(double v) { return absl::StrCat(v); }

void CheckModel(const ModelConfig& m, Checker& c) {
  c.Require(m.family() != ModelConfig::FAMILY_UNSPECIFIED, "model.family",
            "not set (set model.preset or model.family)");
  c.Require(m.n_layer() > 0, "model.n_layer", "must be > 0, got " + Num(m.n_layer()));
  c.Require(m.n_head() > 0, "model.n_head", "must be > 0, got " + Num(m.n_head()));
  c.Require(m.n_kv_head() > 0, "model.n_kv_head", "must be > 0, got " + Num(m.n_kv_head()));
  c.Require(m.d_model() > 0, "model.d_model", "must be > 0, got " + Num(m.d_model()));
  c.Require(m.d_ff() > 0, "model.d_ff", "must be > 0, got " + Num(m.d_ff()));
  c.Require(m.vocab_size() > 0, "model.vocab_size", "must be > 0, got " + Num(m.vocab_size()));
  c.Require(m.max_seq_len() > 0, "model.max_seq_len", "must be > 0, got " + Num(m.max_seq_len()));
  if (m.n_head() > 0 && m.d_model() > 0) {
    c.Require(m.d_model() % m.n_head() == 0, "model.n_head",
              absl::StrCat("n_head (", m.n_head(), ") must divide d_model (", m.d_model(), ")"));
  }
  if (m.n_head() > 0 && m.n_kv_head() > 0) {
    c.Require(
        m.n_head() % m.n_kv_head() == 0, "model.n_kv_head",
        absl::StrCat("n_kv_head (", m.n_kv_head(), ") must divide n_head (", m.n_head(), ")"));
  }
  if (m.family() == ModelConfig::GPT2) {
    c.Require(m.n_kv_head() == m.n_head(), "model.n_kv_head",
              absl::StrCat("GPT2 uses multi-head attention: n_kv_head (", m.n_kv_head(),
                           ") must equal n_head (", m.n_head(), ")"));
  }
  if (m.family() == ModelConfig::LLAMA) {
    c.Require(m.rope_theta() > 0, "model.rope_theta", "must be > 0, got " + Num(m.rope_theta()));
    if (m.n_head() > 0 && m.d_model() % m.n_head() == 0) {
      c.Require((m.d_model() / m.n_head()) % 2 == 0, "model.d_model",
                absl::StrCat("head size d_model / n_head = ", m.d_model() / m.n_head(),
                             " must be even for rotary embeddings"));
    }
  }
  c.Require(m.norm_eps() > 0, "model.norm_eps", "must be > 0, got " + Num(m.norm_eps()));
  c.Require(m.dropout() >= 0 && m.dropout() < 1, "model.dropout",
            "must be in [0, 1), got " + Num(m.dropout()));
  c.Require(m.init_std() > 0, "model.init_std", "must be > 0, got " + Num(m.init_std()));
  c.Require(m.vocab_pad_multiple() >= 1, "model.vocab_pad_multiple",
            "must be >= 1, got " + Num(m.vocab_pad_multiple()));
}

void CheckData(const TrainConfig& cfg, Checker& c) {
  const DataConfig& d = cfg.data();
  if (!d.synthetic()) {
    c.Require(d.train_shards_size() > 0, "data.train_shards",
              "no training data given (set a glob of token shards, or data.synthetic: true)");
    for (const std::string& g : d.train_shards()) {
      c.Require(GlobMatches(g), "data.train_shards",
                "no file matches '" + g + "' (run `kiln prepare-data` first?)");
    }
    for (const std::string& g : d.val_shards()) {
      c.Require(GlobMatches(g), "data.val_shards", "no file matches '" + g + "'");
    }
    if (!d.tokenizer_dir().empty()) {
      c.Require(std::filesystem::is_directory(d.tokenizer_dir()), "data.tokenizer_dir",
                "'" + d.tokenizer_dir() + "' is not a directory");
    }
  }
  c.Require(d.seq_len() > 0, "data.seq_len", "must be > 0, got " + Num(d.seq_len()));
  c.Require(d.seq_len() <= cfg.model().max_seq_len(), "data.seq_len",
            absl::StrCat("seq_len (", d.seq_len(), ") exceeds model.max_seq_len (",
                         cfg.model().max_seq_len(), ")"));
  c.Require(d.prefetch() >= 0, "data.prefetch", "must be >= 0, got " + Num(d.prefetch()));
}

// Batch divisibility for a data-parallel size `dp` (dp_known false: only what holds for any dp).
void CheckBatches(const TrainConfig& cfg, int dp, bool dp_known, Checker& c) {
  const ParallelConfig& p = cfg.parallel();
  const int64_t global = cfg.training().global_batch_size();
  if (global <= 0 || dp <= 0) return;
  const std::string dp_text = dp_known ? absl::StrCat(" * dp (", dp, ")") : "";
  int64_t unit = dp;  // sequences per micro-step over all ranks
  std::string unit_text = dp_known ? absl::StrCat("dp (", dp, ")") : "";
  if (p.has_micro_batch_size()) {
    if (p.micro_batch_size() <= 0) return;  // reported by CheckParallel
    unit = static_cast<int64_t>(p.micro_batch_size()) * dp;
    unit_text = absl::StrCat("parallel.micro_batch_size (", p.micro_batch_size(), ")", dp_text,
                             dp_known ? absl::StrCat(" = ", unit) : "");
  }
  if (unit_text.empty()) return;
  c.Require(global % unit == 0, "training.global_batch_size",
            absl::StrCat("global batch ", global, " is not divisible by ", unit_text));
  const BatchRamp& ramp = cfg.schedule().batch_ramp();
  if (ramp.start() > 0) {
    c.Require(ramp.start() % unit == 0, "schedule.batch_ramp.start",
              absl::StrCat("start ", ramp.start(), " is not divisible by ", unit_text));
    if (ramp.increment() > 0) {
      c.Require(ramp.increment() % unit == 0, "schedule.batch_ramp.increment",
                absl::StrCat("increment ", ramp.increment(), " is not divisible by ", unit_text));
    }
  }
  if (global % unit != 0 || !p.has_micro_batch_size()) return;
  const int64_t accum = global / unit;
  if (p.pp() > 1 && p.pipeline_micro_batches() > 0) {
    c.Require(accum % p.pipeline_micro_batches() == 0, "parallel.pipeline_micro_batches",
              absl::StrCat(p.pipeline_micro_batches(), " does not divide the ", accum,
                           " micro-batches of an optimizer step"));
  }
  if (p.pp() > 1 && p.pipeline_schedule() == ParallelConfig::INTERLEAVED_1F1B) {
    const int64_t per_flush = p.pipeline_micro_batches() > 0 ? p.pipeline_micro_batches() : accum;
    c.Require(per_flush % p.pp() == 0, "parallel.pipeline_micro_batches",
              absl::StrCat("INTERLEAVED_1F1B needs the micro-batches per flush (", per_flush,
                           ") to be a multiple of pp (", p.pp(), ")"));
  }
}

void CheckParallel(const TrainConfig& cfg, Checker& c) {
  const ParallelConfig& p = cfg.parallel();
  const ModelConfig& m = cfg.model();
  c.Require(p.dp() >= 0, "parallel.dp",
            "must be >= 0 (0 = from the world size), got " + Num(p.dp()));
  c.Require(p.tp() >= 1, "parallel.tp", "must be >= 1, got " + Num(p.tp()));
  c.Require(p.pp() >= 1, "parallel.pp", "must be >= 1, got " + Num(p.pp()));
  c.Require(p.zero_stage() >= 0 && p.zero_stage() <= 3, "parallel.zero_stage",
            "must be 0, 1, 2 or 3, got " + Num(p.zero_stage()));
  if (p.has_micro_batch_size()) {
    c.Require(p.micro_batch_size() > 0, "parallel.micro_batch_size",
              "must be > 0, got " + Num(p.micro_batch_size()));
  }
  if (p.tp() > 1) {
    c.Require(m.n_head() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.n_head (", m.n_head(), ")"));
    c.Require(m.n_kv_head() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.n_kv_head (", m.n_kv_head(), ")"));
    c.Require(m.d_ff() % p.tp() == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") must divide model.d_ff (", m.d_ff(), ")"));
  }
  c.Require(p.virtual_stages() >= 1, "parallel.virtual_stages",
            "must be >= 1, got " + Num(p.virtual_stages()));
  if (p.pp() >= 1 && p.virtual_stages() >= 1) {
    const bool interleaved = p.pipeline_schedule() == ParallelConfig::INTERLEAVED_1F1B;
    const int chunks = p.pp() * (interleaved ? p.virtual_stages() : 1);
    c.Require(m.n_layer() % chunks == 0, "parallel.pp",
              interleaved ? absl::StrCat("pp (", p.pp(), ") * virtual_stages (", p.virtual_stages(),
                                         ") must divide model.n_layer (", m.n_layer(), ")")
                          : absl::StrCat("pp (", p.pp(), ") must divide model.n_layer (",
                                         m.n_layer(), ")"));
    c.Require(interleaved || p.virtual_stages() == 1, "parallel.virtual_stages",
              "only INTERLEAVED_1F1B uses virtual stages");
  }
  if (p.pp() > 1) {
    c.Require(
        p.zero_stage() <= 1, "parallel.zero_stage",
        absl::StrCat("ZeRO-", p.zero_stage(),
                     " shards gradients, which pipeline parallelism (pp > 1) cannot; use 0 or 1"));
  }
  c.Require(p.pipeline_micro_batches() >= 0, "parallel.pipeline_micro_batches",
            "must be >= 0, got " + Num(p.pipeline_micro_batches()));
  c.Require(p.bucket_mb() > 0, "parallel.bucket_mb", "must be > 0, got " + Num(p.bucket_mb()));
  c.Require(p.timeout_s() > 0, "parallel.timeout_s", "must be > 0, got " + Num(p.timeout_s()));
  c.Require(!(p.backend() == ParallelConfig::NCCL && cfg.device() == TrainConfig::CPU),
            "parallel.backend", "NCCL needs device CUDA (device is CPU); use MPI");
  CheckBatches(cfg, p.dp() > 0 ? p.dp() : 1, p.dp() > 0, c);
}

void CheckOptimizer(const OptimizerConfig& o, Checker& c) {
  c.Require(std::isfinite(o.lr()) && o.lr() > 0, "optimizer.lr",
            "learning rate must be > 0, got " + Num(o.lr()));
  c.Require(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1",
            "must be in [0, 1), got " + Num(o.beta1()));
  c.Require(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2",
            "must be in [0, 1), got " + Num(o.beta2()));
  c.Require(o.eps() > 0, "optimizer.eps", "must be > 0, got " + Num(o.eps()));
  c.Require(o.weight_decay() >= 0, "optimizer.weight_decay",
            "must be >= 0, got " + Num(o.weight_decay()));
  c.Require(o.momentum() >= 0 && o.momentum() < 1, "optimizer.momentum",
            "must be in [0, 1), got " + Num(o.momentum()));
  c.Require(o.grad_clip() >= 0, "optimizer.grad_clip",
            "must be >= 0 (0 = no clipping), got " + Num(o.grad_clip()));
  c.Require(o.decay_min_dim() >= 0, "optimizer.decay_min_dim",
            "must be >= 0, got " + Num(o.decay_min_dim()));
  for (const std::string& pattern : o.no_decay()) {
    c.Require(!pattern.empty(), "optimizer.no_decay", "empty pattern");
  }
}

void CheckSchedules(const TrainConfig& cfg, Checker& c) {
  const LrSchedule& lr = cfg.schedule().lr();
  c.Require(lr.warmup_steps() >= 0, "schedule.lr.warmup_steps",
            "must be >= 0, got " + Num(lr.warmup_steps()));
  if (cfg.training().max_steps() > 0) {
    c.Require(lr.warmup_steps() <= cfg.training().max_steps(), "schedule.lr.warmup_steps",
              absl::StrCat("warmup (", lr.warmup_steps(), ") is longer than training.max_steps (",
                           cfg.training().max_steps(), ")"));
  }
  c.Require(lr.decay_fraction() >= 0 && lr.decay_fraction() <= 1, "schedule.lr.decay_fraction",
            "must be in [0, 1], got " + Num(lr.decay_fraction()));
  c.Require(lr.min_lr_ratio() >= 0 && lr.min_lr_ratio() <= 1, "schedule.lr.min_lr_ratio",
            "must be in [0, 1], got " + Num(lr.min_lr_ratio()));

  const BatchRamp& ramp = cfg.schedule().batch_ramp();
  c.Require(ramp.start() >= 0, "schedule.batch_ramp.start", "must be >= 0 (0 = no ramp)");
  if (ramp.start() > 0) {
    const int global = cfg.training().global_batch_size();
    c.Require(ramp.start() <= global, "schedule.batch_ramp.start",
              absl::StrCat("start (", ramp.start(), ") exceeds training.global_batch_size (",
                           global, ")"));
    c.Require(ramp.increment() > 0, "schedule.batch_ramp.increment",
              "must be > 0 when the ramp is on, got " + Num(ramp.increment()));
    if (ramp.increment() > 0 && ramp.start() <= global) {
      c.Require(
          (global - ramp.start()) % ramp.increment() == 0, "schedule.batch_ramp.increment",
          absl::StrCat("increment (", ramp.increment(), ") must divide global_batch_size - start (",
                       global - ramp.start(), ")"));
    }
    c.Require(ramp.ramp_tokens() > 0, "schedule.batch_ramp.ramp_tokens",
              "must be > 0 when the ramp is on, got " + Num(ramp.ramp_tokens()));
  }

  const SeqLenCurriculum& sl = cfg.schedule().seq_len();
  if (sl.kind() == SeqLenCurriculum::NONE) return;
  const int max_len = sl.max_len() > 0 ? sl.max_len() : cfg.data().seq_len();
  c.Require(sl.min_len() > 0, "schedule.seq_len.min_len", "must be > 0, got " + Num(sl.min_len()));
  c.Require(sl.max_len() >= 0, "schedule.seq_len.max_len",
            "must be >= 0, got " + Num(sl.max_len()));
  c.Require(sl.min_len() <= max_len, "schedule.seq_len.min_len",
            absl::StrCat("min_len (", sl.min_len(), ") exceeds max_len (", max_len, ")"));
  c.Require(
      max_len <= cfg.data().seq_len(), "schedule.seq_len.max_len",
      absl::StrCat("max_len (", max_len, ") exceeds data.seq_len (", cfg.data().seq_len(), ")"));
  c.Require(sl.step_multiple() > 0, "schedule.seq_len.step_multiple",
            "must be > 0, got " + Num(sl.step_multiple()));
  if (sl.step_multiple() > 0) {
    c.Require(sl.min_len() >= sl.step_multiple(), "schedule.seq_len.min_len",
              absl::StrCat("min_len (", sl.min_len(), ") is below step_multiple (",
                           sl.step_multiple(), ")"));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_LINEAR || sl.kind() == SeqLenCurriculum::FIXED_ROOT) {
    c.Require(sl.steps() > 0, "schedule.seq_len.steps", "must be > 0, got " + Num(sl.steps()));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_ROOT) {
    c.Require(sl.root_degree() >= 1, "schedule.seq_len.root_degree",
              "must be >= 1, got " + Num(sl.root_degree()));
  }
  if (sl.kind() == SeqLenCurriculum::FIXED_DISCRETE) {
    const auto& lens = sl.discrete_lens();
    const auto& steps = sl.discrete_steps();
    c.Require(!lens.empty(), "schedule.seq_len.discrete_lens", "FIXED_DISCRETE needs lengths");
    c.Require(steps.size() + 1 == lens.size(), "schedule.seq_len.discrete_steps",
              absl::StrCat("needs one fewer entry than discrete_lens (", lens.size(), "), got ",
                           steps.size()));
    for (int i = 0; i < lens.size(); ++i) {
      c.Require(lens[i] > 0 && lens[i] <= max_len, "schedule.seq_len.discrete_lens",
                absl::StrCat("length ", lens[i], " is outside (0, ", max_len, "]"));
      if (i > 0) {
        c.Require(lens[i] >= lens[i - 1], "schedule.seq_len.discrete_lens", "must not decrease");
      }
    }
    for (int i = 0; i < steps.size(); ++i) {
      c.Require(steps[i] > (i > 0 ? steps[i - 1] : 0), "schedule.seq_len.discrete_steps",
                "must be positive and increasing");
    }
  }
}

void CheckTraining(const TrainingConfig& t, Checker& c) {
  c.Require(t.global_batch_size() > 0, "training.global_batch_size",
            "must be > 0 (sequences per optimizer step), got " + Num(t.global_batch_size()));
  c.Require(t.max_steps() >= 0, "training.max_steps", "must be >= 0, got " + Num(t.max_steps()));
  c.Require(t.token_budget() >= 0, "training.token_budget",
            "must be >= 0, got " + Num(t.token_budget()));
  c.Require(t.max_steps() > 0 || t.token_budget() > 0, "training.max_steps",
            "set training.max_steps or training.token_budget to say when to stop");
}

void CheckPrecision(const TrainConfig& cfg, Checker& c) {
  const PrecisionConfig& p = cfg.precision();
  if (p.dtype() == PrecisionConfig::FP16) {
    c.Require(p.loss_scale_init() > 0, "precision.loss_scale_init",
              "must be > 0, got " + Num(p.loss_scale_init()));
    c.Require(p.loss_scale_growth() > 1, "precision.loss_scale_growth",
              "must be > 1, got " + Num(p.loss_scale_growth()));
    c.Require(p.loss_scale_backoff() > 0 && p.loss_scale_backoff() < 1,
              "precision.loss_scale_backoff",
              "must be in (0, 1), got " + Num(p.loss_scale_backoff()));
    c.Require(p.loss_scale_growth_interval() > 0, "precision.loss_scale_growth_interval",
              "must be > 0, got " + Num(p.loss_scale_growth_interval()));
  }
  c.Require(!(p.fp8_matmul() && cfg.device() == TrainConfig::CPU), "precision.fp8_matmul",
            "fp8 matmuls need device CUDA (a Hopper GPU); device is CPU");
  c.Require(
      !p.fp8_matmul() || p.dtype() == PrecisionConfig::BF16 || p.dtype() == PrecisionConfig::AUTO,
      "precision.fp8_matmul", "fp8 matmuls run inside bf16 training: set precision.dtype: BF16");
}

void CheckCheckpoint(const CheckpointConfig& k, Checker& c) {
  c.Require(k.every_n_steps() >= 0, "checkpoint.every_n_steps",
            "must be >= 0, got " + Num(k.every_n_steps()));
  c.Require(k.keep_last() >= 0, "checkpoint.keep_last",
            "must be >= 0 (0 = keep all), got " + Num(k.keep_last()));
  c.Require(k.keep_every() >= 0, "checkpoint.keep_every",
            "must be >= 0, got " + Num(k.keep_every()));
  const std::string mode = absl::AsciiStrToLower(k.resume());
  if (mode != "auto" && mode != "never") {
    c.Require(!k.resume().empty() && std::filesystem::exists(k.resume()), "checkpoint.resume",
              "'" + k.resume() + "' is neither auto, never nor an existing checkpoint path");
  }
}

void CheckLoggingAndEval(const TrainConfig& cfg, Checker& c) {
  c.Require(cfg.name().find('/') == std::string::npos, "name",
            "'" + cfg.name() + "' must not contain '/'");
  c.Require(cfg.logging().log_every() > 0, "logging.log_every",
            "must be > 0, got " + Num(cfg.logging().log_every()));
  c.Require(cfg.logging().peak_flops() >= 0, "logging.peak_flops",
            "must be >= 0, got " + Num(cfg.logging().peak_flops()));
  const EvalConfig& e = cfg.eval();
  c.Require(e.every_n_steps() >= 0, "eval.every_n_steps",
            "must be >= 0, got " + Num(e.every_n_steps()));
  c.Require(e.batches() > 0, "eval.batches", "must be > 0, got " + Num(e.batches()));
  c.Require(e.sample_every() >= 0, "eval.sample_every",
            "must be >= 0, got " + Num(e.sample_every()));
  c.Require(e.sample_tokens() >= 0, "eval.sample_tokens",
            "must be >= 0, got " + Num(e.sample_tokens()));
  c.Require(e.sample_temperature() > 0, "eval.sample_temperature",
            "must be > 0, got " + Num(e.sample_temperature()));
  c.Require(e.sample_top_k() >= 0, "eval.sample_top_k",
            "must be >= 0, got " + Num(e.sample_top_k()));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

absl::StatusOr<TrainConfig> ParseConfig(const std::string& text, const std::string& filename) {
  TrainConfig config;
  Collector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (parser.ParseFromString(text, &config)) return config;
  std::vector<std::string> lines;
  for (const ParseError& e : errors.errors) {
    int line = e.line, column = e.column;
    PointAtNamedField(text, e.message, &line, &column);
    const std::string path = FieldPathAt(text, line, column);
    lines.push_back(absl::StrCat(filename, ":", line + 1, ":", column + 1, ": ",
                                 path.empty() ? "" : path + ": ", Explain(e.message, path)));
  }
  if (lines.empty()) lines.push_back(filename + ": not a valid TrainConfig textproto");
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

absl::Status ApplyOverride(const std::string& assignment, TrainConfig* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos) {
    return absl::InvalidArgumentError(OverrideError(assignment, "expected PATH=VALUE"));
  }
  const std::string path(absl::StripAsciiWhitespace(assignment.substr(0, eq)));
  const std::string value(absl::StripAsciiWhitespace(assignment.substr(eq + 1)));
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = config;
  std::string prefix;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return absl::InvalidArgumentError(OverrideError(
          assignment, absl::StrCat("unknown field '", path,
                                   "': ", prefix.empty() ? "the config" : "'" + prefix + "'",
                                   " has no field '", parts[i], "'", Suggestion(d, parts[i]))));
    }
    prefix += (prefix.empty() ? "" : ".") + parts[i];
    if (i + 1 < parts.size()) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
        return absl::InvalidArgumentError(OverrideError(
            assignment,
            absl::StrCat("unknown field '", path, "': '", prefix, "' is not a section")));
      }
      msg = msg->GetReflection()->MutableMessage(msg, f);
      continue;
    }
    if (f->is_repeated() && value.size() >= 2 && value.front() == '[' && value.back() == ']') {
      msg->GetReflection()->ClearField(msg, f);
      const std::string inner = value.substr(1, value.size() - 2);
      if (absl::StripAsciiWhitespace(inner).empty()) return absl::OkStatus();
      for (absl::string_view item : absl::StrSplit(inner, ',')) {
        absl::Status s = SetScalar(msg, f, std::string(item), path, assignment);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }
    return SetScalar(msg, f, value, path, assignment);
  }
  return absl::InvalidArgumentError(OverrideError(assignment, "empty path"));
}

absl::Status ApplyOverrides(const std::vector<std::string>& assignments, TrainConfig* config) {
  for (const std::string& a : assignments) {
    absl::Status s = ApplyOverride(a, config);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ResolveConfig(TrainConfig* cfg) {
  if (cfg->name().empty()) cfg->set_name("default");
  if (!cfg->has_device()) cfg->set_device(TrainConfig::AUTO);
  absl::Status model = ResolveModelConfig(cfg->mutable_model());
  if (!model.ok()) return model;

  TrainingConfig* t = cfg->mutable_training();
  if (!t->has_seed()) t->set_seed(1337);

  DataConfig* d = cfg->mutable_data();
  if (!d->has_seq_len()) d->set_seq_len(cfg->model().max_seq_len());
  if (!d->has_seed()) d->set_seed(t->seed());
  if (!d->has_shuffle()) d->set_shuffle(true);
  if (!d->has_prefetch()) d->set_prefetch(2);

  ParallelConfig* p = cfg->mutable_parallel();
  if (!p->has_zero_stage()) p->set_zero_stage(0);
  if (!p->has_tp()) p->set_tp(1);
  if (!p->has_pp()) p->set_pp(1);
  if (!p->has_virtual_stages()) p->set_virtual_stages(1);
  if (!p->has_pipeline_schedule()) p->set_pipeline_schedule(ParallelConfig::ONE_F_ONE_B);
  if (!p->has_backend()) p->set_backend(ParallelConfig::BACKEND_AUTO);
  if (!p->has_bucket_mb()) p->set_bucket_mb(25.0);
  if (!p->has_overlap_comm()) p->set_overlap_comm(true);
  if (!p->has_timeout_s()) p->set_timeout_s(300);
  if (p->has_dp() && p->dp() > 0 && !p->has_micro_batch_size() && t->global_batch_size() > 0 &&
      t->global_batch_size() % p->dp() == 0) {
    p->set_micro_batch_size(t->global_batch_size() / p->dp());
  }

  OptimizerConfig* o = cfg->mutable_optimizer();
  if (!o->has_type()) o->set_type(OptimizerConfig::ADAMW);
  if (!o->has_lr()) o->set_lr(6e-4);
  if (!o->has_beta1()) o->set_beta1(0.9);
  if (!o->has_beta2()) o->set_beta2(0.95);
  if (!o->has_eps()) o->set_eps(1e-8);
  if (!o->has_weight_decay()) o->set_weight_decay(0.1);
  if (!o->has_momentum()) o->set_momentum(0.9);
  if (!o->has_grad_clip()) o->set_grad_clip(1.0);
  if (!o->has_decay_min_dim()) o->set_decay_min_dim(2);

  LrSchedule* lr = cfg->mutable_schedule()->mutable_lr();
  if (!lr->has_kind()) lr->set_kind(LrSchedule::COSINE);
  if (!lr->has_decay_fraction()) lr->set_decay_fraction(0.2);
  if (!lr->has_min_lr_ratio()) lr->set_min_lr_ratio(0.1);
  SeqLenCurriculum* sl = cfg->mutable_schedule()->mutable_seq_len();
  if (!sl->has_kind()) sl->set_kind(SeqLenCurriculum::NONE);
  if (sl->kind() != SeqLenCurriculum::NONE) {
    if (!sl->has_root_degree()) sl->set_root_degree(2);
    if (!sl->has_step_multiple()) sl->set_step_multiple(8);
    if (sl->max_len() == 0) sl->set_max_len(d->seq_len());
  }

  PrecisionConfig* pr = cfg->mutable_precision();
  if (!pr->has_dtype()) pr->set_dtype(PrecisionConfig::AUTO);
  if (pr->dtype() == PrecisionConfig::FP16) {
    if (!pr->has_loss_scale_init()) pr->set_loss_scale_init(65536.0);
    if (!pr->has_loss_scale_growth()) pr->set_loss_scale_growth(2.0);
    if (!pr->has_loss_scale_backoff()) pr->set_loss_scale_backoff(0.5);
    if (!pr->has_loss_scale_growth_interval()) pr->set_loss_scale_growth_interval(2000);
  }
  if (!cfg->mutable_recompute()->has_policy()) {
    cfg->mutable_recompute()->set_policy(RecomputeConfig::NONE);
  }

  LoggingConfig* l = cfg->mutable_logging();
  if (l->run_dir().empty()) l->set_run_dir("runs/" + cfg->name());
  if (!l->has_log_every()) l->set_log_every(1);
  if (!l->has_jsonl()) l->set_jsonl(true);
  if (!l->has_tensorboard()) l->set_tensorboard(true);

  CheckpointConfig* k = cfg->mutable_checkpoint();
  if (k->dir().empty()) k->set_dir(l->run_dir() + "/checkpoints");
  if (!k->has_keep_last()) k->set_keep_last(3);
  if (k->resume().empty()) k->set_resume("auto");
  if (!k->has_save_on_signal()) k->set_save_on_signal(true);
  if (!k->has_save_at_end()) k->set_save_at_end(true);

  EvalConfig* e = cfg->mutable_eval();
  if (!e->has_batches()) e->set_batches(20);
  if (!e->has_sample_tokens()) e->set_sample_tokens(64);
  if (!e->has_sample_temperature()) e->set_sample_temperature(1.0);
  return absl::OkStatus();
}

absl::Status Validate(const TrainConfig& cfg) {
  Checker c;
  CheckModel(cfg.model(), c);
  CheckData(cfg, c);
  CheckParallel(cfg, c);
  CheckOptimizer(cfg.optimizer(), c);
  CheckSchedules(cfg, c);
  CheckTraining(cfg.training(), c);
  CheckPrecision(cfg, c);
  CheckCheckpoint(cfg.checkpoint(), c);
  CheckLoggingAndEval(cfg, c);
  return c.status();
}

absl::Status ValidateWorld(const TrainConfig& cfg, int world_size) {
  const ParallelConfig& p = cfg.parallel();
  Checker c;
  if (world_size <= 0 || p.tp() <= 0 || p.pp() <= 0) {
    c.Require(world_size > 0, "parallel", absl::StrCat("world size must be > 0, got ", world_size));
    return c.status();
  }
  if (p.dp() > 0) {
    c.Require(static_cast<int64_t>(p.dp()) * p.tp() * p.pp() == world_size, "parallel.dp",
              absl::StrCat("dp (", p.dp(), ") * tp (", p.tp(), ") * pp (", p.pp(),
                           ") = ", static_cast<int64_t>(p.dp()) * p.tp() * p.pp(),
                           " must equal the world size (", world_size, " ranks)"));
  } else {
    const int model_parallel = p.tp() * p.pp();
    c.Require(world_size % model_parallel == 0, "parallel.tp",
              absl::StrCat("tp (", p.tp(), ") * pp (", p.pp(), ") = ", model_parallel,
                           " must divide the world size (", world_size, " ranks)"));
    if (world_size % model_parallel == 0) CheckBatches(cfg, world_size / model_parallel, true, c);
  }
  return c.status();
}

absl::Status ResolveWorld(int world_size, TrainConfig* cfg) {
  absl::Status s = ValidateWorld(*cfg, world_size);
  if (!s.ok()) return s;
  ParallelConfig* p = cfg->mutable_parallel();
  if (p->dp() <= 0) p->set_dp(world_size / (p->tp() * p->pp()));
  if (!p->has_micro_batch_size()) {
    p->set_micro_batch_size(cfg->training().global_batch_size() / p->dp());
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainConfig> LoadConfig(const std::string& path,
                                       const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file '", path, "': cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<TrainConfig> cfg = ParseConfig(text.str(), path);
  if (!cfg.ok()) return cfg.status();
  absl::Status s = ApplyOverrides(overrides, &*cfg);
  if (!s.ok()) return s;
  s = ResolveConfig(&*cfg);
  if (s.ok()) s = Validate(*cfg);
  if (!s.ok()) {  // every "FIELD: reason" line prefixed with the file
    std::vector<std::string> lines = absl::StrSplit(s.message(), '\n');
    for (std::string& line : lines) line = absl::StrCat(path, ": ", line);
    return absl::Status(s.code(), absl::StrJoin(lines, "\n"));
  }
  return cfg;
}

std::string PrintConfig(const TrainConfig& config) {
  std::string out;
  pb::TextFormat::Printer printer;
  printer.PrintToString(config, &out);
  return out;
}

int64_t GradAccumulationSteps(const TrainConfig& cfg) {
  const int64_t unit =
      static_cast<int64_t>(cfg.parallel().micro_batch_size()) * std::max(cfg.parallel().dp(), 1);
  return unit > 0 ? cfg.training().global_batch_size() / unit : 0;
}

}  // namespace kiln
