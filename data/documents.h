// Documents from the user's input files, shared by prepare-data and tokenizer training.
//   text files: documents separated by a separator string (default "<|endoftext|>", the GPT-2
//     convention; "" makes each file one document); empty documents are skipped.
//   JSONL files (.jsonl/.ndjson, or --format jsonl): one JSON object per non-blank line, the
//     document being the string member `field` (default "text"); the whole record must be valid
//     JSON (core/json.h: strict, duplicate keys rejected, lone \u surrogates read as U+FFFD).
// Files are memory-mapped; documents are enumerated in input order (globs expand sorted), each with
// its index, so work split across threads can be put back in order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/io.h"

namespace kiln::data {

enum class InputFormat { kAuto, kText, kJsonl };
absl::StatusOr<InputFormat> parse_input_format(std::string_view name);  // auto | text | jsonl

struct DocumentOptions {
  InputFormat format = InputFormat::kAuto;
  std::string separator = "<|endoftext|>";
  std::string jsonl_field = "text";
};

// Where a document is: its text (text files) or its JSON line (JSONL, decoded by DocumentText).
struct RawDocument {
  std::string_view raw;
  int32_t file = 0;
  int64_t line = 0;  // 1-based line of a JSONL record (0 for text documents)
  bool jsonl = false;
};

class DocumentSource {
 public:
  // Expands globs and maps every file. Errors: no inputs, a pattern matching nothing, an unreadable
  // file, an unknown format.
  static absl::StatusOr<DocumentSource> Open(const std::vector<std::string>& inputs,
                                             const DocumentOptions& options);

  const std::vector<std::string>& files() const { return paths_; }
  int64_t total_bytes() const { return total_bytes_; }
  // Calls fn(doc) for every document in order; stops early when fn returns false.
  void ForEach(const std::function<bool(const RawDocument&)>& fn) const;
  int64_t CountDocuments() const;
  // The document's text: `doc.raw` itself for text, else the JSONL field decoded into *storage.
  // Errors name the file and line.
  absl::StatusOr<std::string_view> DocumentText(const RawDocument& doc, std::string* storage) const;

 private:
  DocumentOptions options_;
  std::vector<std::string> paths_;
  std::vector<MappedFile> maps_;
  std::vector<bool> jsonl_;
  int64_t total_bytes_ = 0;
};

}  // namespace kiln::data
