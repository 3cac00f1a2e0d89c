// Minimal JSON for the data layer: parsing encoder.json, JSONL records and test fixtures, and
// writing JSON strings. Strings are byte strings: \uXXXX escapes become UTF-8 (a lone surrogate
// becomes U+FFFD, as JavaScript's TextEncoder does) and raw bytes are copied through unchanged.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace kiln::data {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string str;
  std::vector<JsonValue> array;
  std::vector<std::pair<std::string, JsonValue>> object;  // in file order

  bool is_string() const { return type == Type::kString; }
  bool is_number() const { return type == Type::kNumber; }
  bool is_array() const { return type == Type::kArray; }
  bool is_object() const { return type == Type::kObject; }
  // The member named `key` of an object, or nullptr.
  const JsonValue* find(std::string_view key) const;
};

// Parses one JSON value spanning all of `text` (surrounding whitespace allowed). Errors say at
// which byte offset parsing failed.
absl::StatusOr<JsonValue> ParseJson(std::string_view text);

// The string value of the top-level member `field` of the JSON object `text`, without building the
// rest of the object. NotFound when the object has no such member; InvalidArgument when `text` is
// not an object or the member is not a string.
absl::StatusOr<std::string> JsonStringField(std::string_view text, std::string_view field);

// Appends `s` as a quoted JSON string, escaping '"', '\\' and control characters; other bytes are
// copied unchanged (so valid UTF-8 in, valid JSON out).
void AppendJsonString(std::string_view s, std::string* out);

}  // namespace kiln::data
