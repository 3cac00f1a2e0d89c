// A small strict JSON reader (RFC 8259) for the files kiln reads from outside: safetensors headers
// and Hugging Face config.json. Bounded nesting depth, exact integers, \u escapes to UTF-8;
// errors give the byte offset. Depends only on Abseil (the fuzzer builds it alone).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kiln::launch {

struct JsonValue {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;              // kNumber
  std::string text;               // kString: the decoded string; kNumber: the literal as written
  std::vector<JsonValue> items;   // kArray; kObject: the member values
  std::vector<std::string> keys;  // kObject: the member names, in file order (keys[i] -> items[i])

  bool is_object() const { return kind == Kind::kObject; }
  bool is_array() const { return kind == Kind::kArray; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_number() const { return kind == Kind::kNumber; }
  // The member named `key` (the first one), or null.
  const JsonValue* find(std::string_view key) const;
  // True when this is a number written as an integer (no fraction or exponent) that fits.
  bool as_int64(int64_t* out) const;
  bool as_uint64(uint64_t* out) const;
};

// Parses exactly one JSON value; only whitespace may follow it. Duplicate object keys are an error
// (a file that could mean two things is rejected).
absl::StatusOr<JsonValue> parse_json(std::string_view text, int max_depth = 64);

// `s` as a JSON string literal, quotes included.
std::string json_quote(std::string_view s);

}  // namespace kiln::launch
