// Strict recursive-descent JSON parser (see json.h).
#include "launch/json.h"

#include <cstdlib>
#include <limits>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace kiln::launch {
namespace {

class Parser {
 public:
  Parser(std::string_view s, int max_depth) : s_(s), max_depth_(max_depth) {}

  absl::StatusOr<JsonValue> document() {
    JsonValue v;
    if (absl::Status st = value(&v, 0); !st.ok()) return st;
    skip_ws();
    if (pos_ != s_.size()) return error("unexpected data after the JSON value");
    return v;
  }

 private:
  absl::Status error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrFormat("JSON at byte %d: %s", pos_, what));
  }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::Status value(JsonValue* v, int depth) {
    if (depth > max_depth_) return error("nested deeper than " + std::to_string(max_depth_));
    skip_ws();
    if (pos_ >= s_.size()) return error("unexpected end of input");
    const char c = s_[pos_];
    if (c == '{') return object(v, depth);
    if (c == '[') return array(v, depth);
    if (c == '"') {
      v->kind = JsonValue::Kind::kString;
      return string(&v->text);
    }
    if (literal("true")) {
      v->kind = JsonValue::Kind::kBool;
      v->boolean = true;
      return absl::OkStatus();
    }
    if (literal("false")) {
      v->kind = JsonValue::Kind::kBool;
      return absl::OkStatus();
    }
    if (literal("null")) {
      v->kind = JsonValue::Kind::kNull;
      return absl::OkStatus();
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(v);
    return error(absl::StrFormat("unexpected character 0x%02x", static_cast<unsigned char>(c)));
  }

  absl::Status object(JsonValue* v, int depth) {
    v->kind = JsonValue::Kind::kObject;
    ++pos_;  // '{'
    std::set<std::string> keys;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != '"') return error("expected a string key");
      std::string key;
      if (absl::Status st = string(&key); !st.ok()) return st;
      if (!keys.insert(key).second) return error("duplicate key " + json_quote(key));
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') return error("expected ':'");
      ++pos_;
      JsonValue member;
      if (absl::Status st = value(&member, depth + 1); !st.ok()) return st;
      v->keys.push_back(std::move(key));
      v->items.push_back(std::move(member));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      return error("expected ',' or '}'");
    }
  }

  absl::Status array(JsonValue* v, int depth) {
    v->kind = JsonValue::Kind::kArray;
    ++pos_;  // '['
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      JsonValue item;
      if (absl::Status st = value(&item, depth + 1); !st.ok()) return st;
      v->items.push_back(std::move(item));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return error("expected ',' or ']'");
    }
  }

  bool hex4(uint32_t* out) {
    if (pos_ + 4 > s_.size()) return false;
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

  static void append_utf8(std::string* out, uint32_t cp) {
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

  absl::Status string(std::string* out) {
    ++pos_;  // '"'
    for (;;) {
      if (pos_ >= s_.size()) return error("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return error("control character in a string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) return error("unterminated escape");
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
          if (!hex4(&cp)) return error("bad \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            uint32_t lo;
            if (!literal("\\u") || !hex4(&lo) || lo < 0xDC00 || lo >= 0xE000)
              return error("unpaired surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            return error("unpaired surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default:
          return error("bad escape");
      }
    }
  }

  absl::Status number(JsonValue* v) {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t d = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - d;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      return error("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return error("bad number fraction");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) return error("bad number exponent");
    }
    v->kind = JsonValue::Kind::kNumber;
    v->text = std::string(s_.substr(start, pos_ - start));
    if (!absl::SimpleAtod(v->text, &v->number)) v->number = std::strtod(v->text.c_str(), nullptr);
    return absl::OkStatus();
  }

  std::string_view s_;
  int max_depth_;
  size_t pos_ = 0;
};

bool integral_text(const std::string& t) {
  return !t.empty() && t.find_first_of(".eE") == std::string::npos;
}

}  // namespace

const JsonValue* JsonValue::find(std::string_view key) const {
  if (kind != Kind::kObject) return nullptr;
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i] == key) return &items[i];
  return nullptr;
}

bool JsonValue::as_int64(int64_t* out) const {
  return kind == Kind::kNumber && integral_text(text) && absl::SimpleAtoi(text, out);
}

bool JsonValue::as_uint64(uint64_t* out) const {
  return kind == Kind::kNumber && integral_text(text) && text[0] != '-' &&
         absl::SimpleAtoi(text, out);
}

absl::StatusOr<JsonValue> parse_json(std::string_view text, int max_depth) {
  return Parser(text, max_depth).document();
}

std::string json_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace kiln::launch
