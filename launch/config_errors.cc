// Located, explained textproto errors for the config layer (see config_errors.h).
#include "launch/config_errors.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "proto/config.pb.h"

namespace kiln::config_internal {
namespace {

namespace pb = google::protobuf;

// Levenshtein distance: single-character insertions, deletions and substitutions.
int edit_distance(const std::string& a, const std::string& b) {
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

// The field at dotted `path` from `root`, or nullptr.
const pb::FieldDescriptor* find_field_by_path(const pb::Descriptor* root, const std::string& path) {
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

// The dotted path of the field being parsed at (line, column) of textproto `text`: a small scan
// that tracks message nesting ("a { b: 1 }") and the latest field name, good enough to name the
// field in an error.
std::string field_path_at(const std::string& text, int line, int column) {
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
size_t offset_at(const std::string& text, int line, int column) {
  size_t i = 0;
  for (int l = 0; l < line && i < text.size(); ++i) {
    if (text[i] == '\n') ++l;
  }
  for (int c = 0; i < text.size() && text[i] != '\n' && c < column; ++i) {
    c = text[i] == '\t' ? c + 8 - c % 8 : c + 1;
  }
  return i;
}

void position_at(const std::string& text, size_t offset, int* line, int* column) {
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
std::string field_named_in(const std::string& message) {
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
void point_at_named_field(const std::string& text, const std::string& message, int* line,
                          int* column) {
  const std::string name = field_named_in(message);
  if (name.empty()) return;
  auto is_word = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'; };
  size_t end = offset_at(text, *line, *column);
  while (end > 0) {
    const size_t at = text.rfind(name, end - 1);
    if (at == std::string::npos) return;
    const bool starts = at == 0 || !is_word(text[at - 1]);
    const bool ends = at + name.size() >= text.size() || !is_word(text[at + name.size()]);
    if (starts && ends) {
      position_at(text, at, line, column);
      return;
    }
    end = at;
  }
}

}  // namespace

// " (did you mean 'n_layer'?)" for the closest field name of `d`, or "" when none is close.
std::string suggestion(const pb::Descriptor* d, const std::string& name) {
  std::string best;
  int best_dist = std::max<int>(2, static_cast<int>(name.size()) / 3) + 1;
  for (int i = 0; i < d->field_count(); ++i) {
    const int dist = edit_distance(name, d->field(i)->name());
    if (dist < best_dist) best_dist = dist, best = d->field(i)->name();
  }
  return best.empty() ? "" : absl::StrCat(" (did you mean '", best, "'?)");
}

std::string enum_names(const pb::EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) {
    if (!absl::EndsWith(e->value(i)->name(), "_UNSPECIFIED")) names.push_back(e->value(i)->name());
  }
  return absl::StrJoin(names, ", ");
}

// Adds a suggestion or the allowed enum names to a protobuf parser message.
std::string explain(const std::string& message, const std::string& path) {
  static constexpr char kNoField[] = "has no field named \"";
  static constexpr char kType[] = "Message type \"";
  const size_t nf = message.find(kNoField), ty = message.find(kType);
  if (nf != std::string::npos && ty != std::string::npos) {
    const size_t a = ty + sizeof(kType) - 1, b = nf + sizeof(kNoField) - 1;
    const std::string type = message.substr(a, message.find('"', a) - a);
    const std::string name = message.substr(b, message.find('"', b) - b);
    const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
    if (d != nullptr) return message + suggestion(d, name);
  }
  if (absl::EndsWith(message, "got: ")) return message + "end of file (a '{' without its '}'?)";
  if (absl::StrContains(message, "Unknown enumeration value")) {
    const pb::FieldDescriptor* f = find_field_by_path(TrainConfig::descriptor(), path);
    if (f != nullptr && f->enum_type() != nullptr) {
      return absl::StrCat(message, " Expected one of: ", enum_names(f->enum_type()), ".");
    }
  }
  return message;
}

std::string locate_parse_error(const std::string& text, const std::string& filename,
                               const ParseError& error) {
  int line = error.line, column = error.column;
  point_at_named_field(text, error.message, &line, &column);
  const std::string path = field_path_at(text, line, column);
  return absl::StrCat(filename, ":", line + 1, ":", column + 1, ": ",
                      path.empty() ? "" : path + ": ", explain(error.message, path));
}

}  // namespace kiln::config_internal
