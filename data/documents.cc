// Document enumeration over mapped text and JSONL files (see documents.h).
#include "data/documents.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/json.h"
#include "data/absl_compat.h"

namespace kiln::data {
namespace {

bool is_blank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

bool looks_jsonl(const std::string& path) {
  return absl::EndsWith(path, ".jsonl") || absl::EndsWith(path, ".ndjson");
}

}  // namespace

absl::StatusOr<InputFormat> parse_input_format(std::string_view name) {
  if (name == "auto") return InputFormat::kAuto;
  if (name == "text") return InputFormat::kText;
  if (name == "jsonl") return InputFormat::kJsonl;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown input format '", av(name), "' (expected auto, text or jsonl)"));
}

absl::StatusOr<DocumentSource> DocumentSource::Open(const std::vector<std::string>& inputs,
                                                    const DocumentOptions& options) {
  if (inputs.empty()) return absl::InvalidArgumentError("no input files given");
  auto paths = expand_globs(inputs);
  if (!paths.ok()) return paths.status();
  DocumentSource src;
  src.options_ = options;
  for (const std::string& p : *paths) {
    auto m = MappedFile::Open(p);
    if (!m.ok()) return m.status();
    src.total_bytes_ += static_cast<int64_t>(m->size());
    src.maps_.push_back(*std::move(m));
    src.paths_.push_back(p);
    src.jsonl_.push_back(options.format == InputFormat::kJsonl ||
                         (options.format == InputFormat::kAuto && looks_jsonl(p)));
  }
  return src;
}

void DocumentSource::ForEach(const std::function<bool(const RawDocument&)>& fn) const {
  for (size_t f = 0; f < maps_.size(); ++f) {
    std::string_view data = maps_[f].data();
    RawDocument doc;
    doc.file = static_cast<int32_t>(f);
    doc.jsonl = jsonl_[f];
    if (doc.jsonl) {
      int64_t line = 0;
      size_t pos = 0;
      while (pos < data.size()) {
        size_t nl = data.find('\n', pos);
        size_t end = nl == std::string_view::npos ? data.size() : nl;
        ++line;
        std::string_view text = data.substr(pos, end - pos);
        pos = end + 1;
        if (is_blank(text)) continue;
        doc.raw = text;
        doc.line = line;
        if (!fn(doc)) return;
      }
      continue;
    }
    const std::string& sep = options_.separator;
    size_t pos = 0;
    while (pos < data.size()) {
      size_t next = sep.empty() ? std::string_view::npos : data.find(sep, pos);
      size_t end = next == std::string_view::npos ? data.size() : next;
      doc.raw = data.substr(pos, end - pos);
      pos = next == std::string_view::npos ? data.size() : next + sep.size();
      if (doc.raw.empty()) continue;
      if (!fn(doc)) return;
    }
  }
}

int64_t DocumentSource::CountDocuments() const {
  int64_t n = 0;
  ForEach([&](const RawDocument&) {
    ++n;
    return true;
  });
  return n;
}

absl::StatusOr<std::string_view> DocumentSource::DocumentText(const RawDocument& doc,
                                                              std::string* storage) const {
  if (!doc.jsonl) return doc.raw;
  // Records from other tools may nest deeply or carry lone UTF-16 surrogates (which JavaScript's
  // TextEncoder, like the GPT-2 reference encoder, turns into U+FFFD).
  static constexpr JsonOptions kRecord{.max_depth = 512, .replace_lone_surrogates = true};
  auto text = json_string_field(doc.raw, options_.jsonl_field, kRecord);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat(paths_[doc.file], ":", doc.line, ": ",
                                                           text.status().message()));
  }
  *storage = *std::move(text);
  return std::string_view(*storage);
}

}  // namespace kiln::data
