// Minimal recursive-descent JSON parser and string writer (see json.h).
#include "data/json.h"

#include <cctype>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "data/absl_compat.h"

namespace kiln::data {
namespace {

constexpr int kMaxDepth = 512;

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

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  absl::Status error(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON: ", av(what), " at byte ", pos_));
  }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  absl::Status parse_value(JsonValue* v, int depth) {
    if (depth > kMaxDepth) return error("nesting too deep");
    skip_ws();
    if (at_end()) return error("unexpected end of input");
    char c = peek();
    if (c == '"') {
      v->type = JsonValue::Type::kString;
      return parse_string(&v->str);
    }
    if (c == '{') return parse_object(v, depth);
    if (c == '[') return parse_array(v, depth);
    if (c == 't' || c == 'f' || c == 'n') return parse_literal(v);
    return parse_number(v);
  }

  absl::Status parse_literal(JsonValue* v) {
    auto take = [&](std::string_view word) {
      if (s_.substr(pos_, word.size()) != word) return false;
      pos_ += word.size();
      return true;
    };
    if (take("true")) {
      v->type = JsonValue::Type::kBool;
      v->boolean = true;
    } else if (take("false")) {
      v->type = JsonValue::Type::kBool;
    } else if (take("null")) {
      v->type = JsonValue::Type::kNull;
    } else {
      return error("invalid literal");
    }
    return absl::OkStatus();
  }

  absl::Status parse_number(JsonValue* v) {
    size_t start = pos_;
    if (peek() == '-') ++pos_;
    while (!at_end() && (std::isdigit(static_cast<unsigned char>(peek())) || peek() == '.' ||
                         peek() == 'e' || peek() == 'E' || peek() == '+' || peek() == '-')) {
      ++pos_;
    }
    std::string num(s_.substr(start, pos_ - start));
    if (num.empty() || num == "-") return error("invalid value");
    char* end = nullptr;
    v->number = std::strtod(num.c_str(), &end);
    if (end != num.c_str() + num.size()) return error(absl::StrCat("invalid number '", num, "'"));
    v->type = JsonValue::Type::kNumber;
    return absl::OkStatus();
  }

  absl::Status parse_hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) return error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        v |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        v |= c - 'A' + 10;
      } else {
        return error("invalid \\u escape");
      }
    }
    *out = v;
    return absl::OkStatus();
  }

  // REQUIRES: peek() == '"'.
  absl::Status parse_string(std::string* out) {
    ++pos_;
    out->clear();
    for (;;) {
      size_t run = pos_;
      while (pos_ < s_.size() && s_[pos_] != '"' && s_[pos_] != '\\') {
        if (static_cast<unsigned char>(s_[pos_]) < 0x20)
          return error("control character in string");
        ++pos_;
      }
      out->append(s_.data() + run, pos_ - run);
      if (at_end()) return error("unterminated string");
      if (s_[pos_++] == '"') return absl::OkStatus();
      if (at_end()) return error("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
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
          if (auto st = parse_hex4(&cp); !st.ok()) return st;
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            size_t save = pos_;
            pos_ += 2;
            uint32_t lo;
            if (auto st = parse_hex4(&lo); !st.ok()) return st;
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              pos_ = save;  // lone high surrogate; the next escape stands alone
            }
          }
          if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
          append_utf8(cp, out);
          break;
        }
        default:
          return error(absl::StrCat("invalid escape '\\", std::string(1, e), "'"));
      }
    }
  }

  absl::Status parse_array(JsonValue* v, int depth) {
    ++pos_;
    v->type = JsonValue::Type::kArray;
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      v->array.emplace_back();
      if (auto st = parse_value(&v->array.back(), depth + 1); !st.ok()) return st;
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

  absl::Status parse_key(std::string* key) {
    skip_ws();
    if (peek() != '"') return error("expected a string key");
    if (auto st = parse_string(key); !st.ok()) return st;
    skip_ws();
    if (peek() != ':') return error("expected ':'");
    ++pos_;
    return absl::OkStatus();
  }

  absl::Status parse_object(JsonValue* v, int depth) {
    ++pos_;
    v->type = JsonValue::Type::kObject;
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      v->object.emplace_back();
      if (auto st = parse_key(&v->object.back().first); !st.ok()) return st;
      if (auto st = parse_value(&v->object.back().second, depth + 1); !st.ok()) return st;
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

  // Skips one value without building it (strings are still unescaped into a scratch buffer so
  // malformed escapes are caught).
  absl::Status skip_value(int depth) {
    JsonValue scratch;
    return parse_value(&scratch, depth);
  }

  absl::StatusOr<std::string> string_field(std::string_view field) {
    skip_ws();
    if (peek() != '{') return error("expected a JSON object");
    ++pos_;
    skip_ws();
    if (peek() == '}') return absl::NotFoundError(absl::StrCat("no field \"", av(field), "\""));
    std::string key;
    for (;;) {
      if (auto st = parse_key(&key); !st.ok()) return st;
      skip_ws();
      if (key == field) {
        if (peek() != '"') {
          return absl::InvalidArgumentError(
              absl::StrCat("field \"", av(field), "\" is not a string"));
        }
        std::string value;
        if (auto st = parse_string(&value); !st.ok()) return st;
        return value;
      }
      if (auto st = skip_value(1); !st.ok()) return st;
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == '}') {
        return absl::NotFoundError(absl::StrCat("no field \"", av(field), "\""));
      } else {
        return error("expected ',' or '}'");
      }
    }
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

const JsonValue* JsonValue::find(std::string_view key) const {
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

absl::StatusOr<JsonValue> ParseJson(std::string_view text) {
  Parser p(text);
  JsonValue v;
  if (auto st = p.parse_value(&v, 0); !st.ok()) return st;
  p.skip_ws();
  if (!p.at_end()) return p.error("trailing characters");
  return v;
}

absl::StatusOr<std::string> JsonStringField(std::string_view text, std::string_view field) {
  Parser p(text);
  return p.string_field(field);
}

void AppendJsonString(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"') {
      out->append("\\\"");
    } else if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '\t') {
      out->append("\\t");
    } else if (c == '\r') {
      out->append("\\r");
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

}  // namespace kiln::data
