// Strict recursive-descent JSON parser and string escaper (see json.h).
#include "core/json.h"

#include <cstdlib>
#include <unordered_set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kiln {
namespace {

// Debian's Abseil has its own absl::string_view, which does not convert from std::string_view.
absl::string_view av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool is_high_surrogate(uint32_t cp) { return cp >= 0xD800 && cp < 0xDC00; }
bool is_low_surrogate(uint32_t cp) { return cp >= 0xDC00 && cp < 0xE000; }

class Parser {
 public:
  Parser(std::string_view s, const JsonOptions& options) : s_(s), options_(options) {}

  absl::StatusOr<JsonValue> document() {
    JsonValue v;
    if (absl::Status st = value(&v, 0); !st.ok()) return st;
    skip_ws();
    if (pos_ != s_.size()) return error("unexpected data after the JSON value");
    return v;
  }

 private:
  absl::Status error_at(size_t at, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON at byte ", at, ": ", av(what)));
  }
  absl::Status error(std::string_view what) const { return error_at(pos_, what); }

  bool at_end() const { return pos_ >= s_.size(); }
  // The next byte, or '\0' at the end (never a valid continuation where it is tested).
  char peek() const { return at_end() ? '\0' : s_[pos_]; }
  void skip_ws() {
    while (!at_end() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::Status value(JsonValue* v, int depth) {
    if (depth > options_.max_depth)
      return error(absl::StrCat("nested deeper than ", options_.max_depth));
    skip_ws();
    if (at_end()) return error("unexpected end of input");
    const char c = s_[pos_];
    if (c == '{') return object(v, depth);
    if (c == '[') return array(v, depth);
    if (c == '"') {
      v->type = JsonValue::Type::kString;
      return string(&v->str);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(v);
    if (literal("true")) {
      v->type = JsonValue::Type::kBool;
      v->boolean = true;
    } else if (literal("false")) {
      v->type = JsonValue::Type::kBool;
    } else if (literal("null")) {
      v->type = JsonValue::Type::kNull;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      const unsigned char u = static_cast<unsigned char>(c);
      return error(absl::StrCat("expected a value, found byte 0x", std::string{kHex[u >> 4]},
                                std::string{kHex[u & 15]}));
    }
    return absl::OkStatus();
  }

  absl::Status object(JsonValue* v, int depth) {
    v->type = JsonValue::Type::kObject;
    ++pos_;  // '{'
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_ws();
      if (peek() != '"')
        return error(at_end() ? "unexpected end of input" : "expected a string key");
      const size_t key_at = pos_;
      std::string key;
      if (absl::Status st = string(&key); !st.ok()) return st;
      if (!seen.insert(key).second) return error_at(key_at, "duplicate key " + json_quote(key));
      skip_ws();
      if (peek() != ':') return error("expected ':'");
      ++pos_;
      v->object.push_back({std::move(key), JsonValue()});
      if (absl::Status st = value(&v->object.back().value, depth + 1); !st.ok()) return st;
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == '}') {
        ++pos_;
        return absl::OkStatus();
      } else {
        return error("expected ',' or '}'");
      }
    }
  }

  absl::Status array(JsonValue* v, int depth) {
    v->type = JsonValue::Type::kArray;
    ++pos_;  // '['
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      v->array.emplace_back();
      if (absl::Status st = value(&v->array.back(), depth + 1); !st.ok()) return st;
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == ']') {
        ++pos_;
        return absl::OkStatus();
      } else {
        return error("expected ',' or ']'");
      }
    }
  }

  // Four hex digits at pos_; advances past them only on success.
  bool hex4(uint32_t* out) {
    if (s_.size() - pos_ < 4) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_ + i];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        v |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        v |= c - 'A' + 10;
      } else {
        return false;
      }
    }
    pos_ += 4;
    *out = v;
    return true;
  }

  // The code point of a \u escape whose "\u" starts at `at` (pos_ is past the "\u"): a surrogate
  // pair is joined; a lone surrogate is an error or U+FFFD (JsonOptions::replace_lone_surrogates).
  absl::Status unicode_escape(size_t at, uint32_t* cp) {
    if (!hex4(cp)) return error_at(at, "bad \\u escape (expected 4 hex digits)");
    if (is_high_surrogate(*cp)) {
      const size_t save = pos_;
      uint32_t lo;
      if (literal("\\u") && hex4(&lo) && is_low_surrogate(lo)) {
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
        return absl::OkStatus();
      }
      pos_ = save;  // what follows is read on its own
    }
    if (is_high_surrogate(*cp) || is_low_surrogate(*cp)) {
      if (!options_.replace_lone_surrogates)
        return error_at(at, "unpaired UTF-16 surrogate in \\u escape");
      *cp = 0xFFFD;
    }
    return absl::OkStatus();
  }

  // REQUIRES: peek() == '"'.
  absl::Status string(std::string* out) {
    ++pos_;
    for (;;) {
      const size_t run = pos_;
      while (!at_end() && s_[pos_] != '"' && s_[pos_] != '\\' &&
             static_cast<unsigned char>(s_[pos_]) >= 0x20)
        ++pos_;
      out->append(s_.data() + run, pos_ - run);
      if (at_end()) return error("unterminated string");
      const size_t at = pos_;
      const char c = s_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (c != '\\') return error_at(at, "control character in a string (escape it)");
      if (at_end()) return error("unterminated string");
      const char e = s_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out->push_back(e);
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          uint32_t cp;
          if (absl::Status st = unicode_escape(at, &cp); !st.ok()) return st;
          append_utf8(cp, out);
          break;
        }
        default:
          return error_at(at, "bad escape (\\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX)");
      }
    }
  }

  // The number grammar of RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  absl::Status number(JsonValue* v) {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t d = pos_;
      while (!at_end() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - d;
    };
    if (peek() == '-') ++pos_;
    if (peek() == '0') {
      ++pos_;
      if (peek() >= '0' && peek() <= '9') return error("bad number (leading zero)");
    } else if (digits() == 0) {
      return error("bad number (expected a digit)");
    }
    if (peek() == '.') {
      ++pos_;
      if (digits() == 0) return error("bad number (expected a digit after '.')");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (digits() == 0) return error("bad number (expected exponent digits)");
    }
    v->type = JsonValue::Type::kNumber;
    v->str = std::string(s_.substr(start, pos_ - start));
    // SimpleAtod is locale-independent and gives +-inf beyond the double range.
    if (!absl::SimpleAtod(v->str, &v->number)) v->number = std::strtod(v->str.c_str(), nullptr);
    return absl::OkStatus();
  }

  std::string_view s_;
  const JsonOptions& options_;
  size_t pos_ = 0;
};

bool integral_literal(const JsonValue& v) {
  return v.is_number() && !v.str.empty() && v.str.find_first_of(".eE") == std::string::npos;
}

}  // namespace

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

const JsonValue* JsonValue::find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [k, v] : object)
    if (k == key) return &v;
  return nullptr;
}

bool JsonValue::as_int64(int64_t* out) const {
  return integral_literal(*this) && absl::SimpleAtoi(str, out);
}

bool JsonValue::as_uint64(uint64_t* out) const {
  return integral_literal(*this) && str[0] != '-' && absl::SimpleAtoi(str, out);
}

absl::StatusOr<JsonValue> parse_json(std::string_view text, const JsonOptions& options) {
  return Parser(text, options).document();
}

absl::StatusOr<std::string> json_string_field(std::string_view text, std::string_view field,
                                              const JsonOptions& options) {
  absl::StatusOr<JsonValue> v = parse_json(text, options);
  if (!v.ok()) return v.status();
  if (!v->is_object()) return absl::InvalidArgumentError("expected a JSON object");
  for (auto& [k, member] : v->object) {
    if (k != field) continue;
    if (!member.is_string())
      return absl::InvalidArgumentError(absl::StrCat("field \"", av(field), "\" is not a string"));
    return std::move(member.str);
  }
  return absl::NotFoundError(absl::StrCat("no field \"", av(field), "\""));
}

void append_json_string(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"') {
      out->append("\\\"");
    } else if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '\r') {
      out->append("\\r");
    } else if (c == '\t') {
      out->append("\\t");
    } else if (c < 0x20 || c == 0x7F) {
      out->append("\\u00");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
    } else {
      out->push_back(ch);
    }
  }
  out->push_back('"');
}

std::string json_quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_json_string(s, &out);
  return out;
}

}  // namespace kiln
