// kiln's one JSON reader and writer: a strict RFC 8259 parser for files kiln reads from outside
// (safetensors headers, Hugging Face config.json, GPT-2's encoder.json, JSONL corpora) and the
// string escaper every JSON writer uses. Depends only on Abseil (the fuzzers build it alone).
//
// Parsing rules:
// - Exactly one value; only whitespace (space, tab, CR, LF) may surround it. Numbers follow the
//   RFC grammar exactly (no leading zeros, '+', '.5', '1.', hex, NaN or Infinity).
// - Object members keep their file order. A duplicate key (compared after unescaping) is an error:
//   readers disagree on which copy wins (Python keeps the last, a first-match find() the first), so
//   a file that could mean two things is rejected rather than read one way.
// - Strings are byte strings: \uXXXX escapes (surrogate pairs included) become UTF-8, other bytes
//   >= 0x80 are copied through unchecked; raw control characters (< 0x20) are errors. A lone UTF-16
//   surrogate is an error unless JsonOptions::replace_lone_surrogates.
// - Nesting is bounded (JsonOptions::max_depth), so untrusted input cannot exhaust the stack.
// - Errors are InvalidArgument "JSON at byte N: what", N the 0-based offset where parsing failed.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kiln {

struct JsonMember;

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;            // kBool
  double number = 0;               // kNumber: the nearest double (+-inf beyond the double range)
  std::string str;                 // kString: the decoded bytes; kNumber: the literal as written
  std::vector<JsonValue> array;    // kArray
  std::vector<JsonMember> object;  // kObject: members in file order

  bool is_null() const { return type == Type::kNull; }
  bool is_bool() const { return type == Type::kBool; }
  bool is_number() const { return type == Type::kNumber; }
  bool is_string() const { return type == Type::kString; }
  bool is_array() const { return type == Type::kArray; }
  bool is_object() const { return type == Type::kObject; }
  // The member named `key` of an object, or nullptr (also when this is not an object).
  const JsonValue* find(std::string_view key) const;
  // True, with *out set, when this is a number written as an integer (no fraction or exponent)
  // that fits the type; exact at any magnitude (read from the literal, not from `number`).
  bool as_int64(int64_t* out) const;
  bool as_uint64(uint64_t* out) const;
};

// An object member. (A struct, not std::pair: a pair of an incomplete JsonValue does not compile
// everywhere.)
struct JsonMember {
  std::string key;
  JsonValue value;
};

struct JsonOptions {
  // A value inside N arrays/objects is at depth N (the top-level value at 0); a value deeper than
  // max_depth is an error.
  int max_depth = 64;
  // A \u escape naming an unpaired UTF-16 surrogate becomes U+FFFD (as JavaScript's TextEncoder
  // does) instead of being an error. For corpora written by tools that let such strings through.
  bool replace_lone_surrogates = false;
};

// Parses one JSON value spanning all of `text` (see the rules above).
absl::StatusOr<JsonValue> parse_json(std::string_view text, const JsonOptions& options = {});

// The string member `field` of the JSON object `text` (a JSONL record, say); the whole record is
// parsed and validated. InvalidArgument when `text` is not valid JSON, not an object, or the member
// is not a string; NotFound ("no field \"FIELD\"") when there is no such member.
absl::StatusOr<std::string> json_string_field(std::string_view text, std::string_view field,
                                              const JsonOptions& options = {});

// Appends `s` as a quoted JSON string literal: '"', '\\' and bytes < 0x20 or 0x7F are escaped
// (\n, \r, \t by name, the rest as \u00XX); other bytes are copied unchanged, so valid UTF-8 in
// gives valid JSON out, and parse_json gives back exactly `s` for any bytes.
void append_json_string(std::string_view s, std::string* out);
// `s` as a quoted JSON string literal (append_json_string to an empty string).
std::string json_quote(std::string_view s);

// Appends the UTF-8 encoding of code point cp (below U+110000) to *out.
void append_utf8(uint32_t cp, std::string* out);

}  // namespace kiln
