// `--set a.b.c=VALUE` overrides applied to a TrainConfig through protobuf reflection.
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/text_format.h"
#include "launch/config.h"
#include "launch/config_errors.h"

namespace kiln {
namespace {

namespace pb = google::protobuf;
using config_internal::enum_names;
using config_internal::explain;
using config_internal::suggestion;

std::string override_error(const std::string& assignment, const std::string& what) {
  return absl::StrCat("--set ", assignment, ": ", what);
}

// "true"/"1" or "false"/"0", any case.
bool parse_bool(const std::string& value, bool* out) {
  const std::string lower = absl::AsciiStrToLower(value);
  if (lower == "true" || lower == "1") {
    *out = true;
  } else if (lower == "false" || lower == "0") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

// Merges a textproto body ("{n_layer: 2 d_model: 128}" or without the braces) into `sub`.
absl::Status merge_message(pb::Message* sub, const std::string& value,
                           const std::string& assignment) {
  std::string body = value;
  if (body.size() >= 2 && body.front() == '{' && body.back() == '}') {
    body = body.substr(1, body.size() - 2);
  }
  config_internal::ParseErrorCollector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (parser.MergeFromString(body, sub)) return absl::OkStatus();
  std::vector<std::string> lines;
  for (const config_internal::ParseError& e : errors.errors) {
    lines.push_back(absl::StrCat("column ", e.column + 1, ": ", explain(e.message, "")));
  }
  return absl::InvalidArgumentError(override_error(assignment, absl::StrJoin(lines, "; ")));
}

// Sets (or, on a repeated field, appends) one value given as text; errors name `path`.
absl::Status set_scalar(pb::Message* msg, const pb::FieldDescriptor* f, std::string value,
                        const std::string& path, const std::string& assignment) {
  const pb::Reflection* r = msg->GetReflection();
  const bool rep = f->is_repeated();
  value = std::string(absl::StripAsciiWhitespace(value));
  auto bad = [&](const std::string& expected) {
    return absl::InvalidArgumentError(override_error(
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
      bool v;
      if (!parse_bool(value, &v)) return bad("true or false");
      rep ? r->AddBool(msg, f, v) : r->SetBool(msg, f, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* ev =
          f->enum_type()->FindValueByName(absl::AsciiStrToUpper(value));
      if (ev == nullptr) return bad(absl::StrCat("one of ", enum_names(f->enum_type())));
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
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return merge_message(rep ? r->AddMessage(msg, f) : r->MutableMessage(msg, f), value,
                           assignment);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status apply_override(const std::string& assignment, TrainConfig* config) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos) {
    return absl::InvalidArgumentError(override_error(assignment, "expected PATH=VALUE"));
  }
  const bool append = eq > 0 && assignment[eq - 1] == '+';  // "list+=value"
  const std::string path(absl::StripAsciiWhitespace(assignment.substr(0, append ? eq - 1 : eq)));
  const std::string value(absl::StripAsciiWhitespace(assignment.substr(eq + 1)));
  std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* msg = config;
  std::string prefix;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* f = d->FindFieldByName(parts[i]);
    if (f == nullptr) {
      return absl::InvalidArgumentError(override_error(
          assignment, absl::StrCat("unknown field '", path,
                                   "': ", prefix.empty() ? "the config" : "'" + prefix + "'",
                                   " has no field '", parts[i], "'", suggestion(d, parts[i]))));
    }
    prefix += (prefix.empty() ? "" : ".") + parts[i];
    if (i + 1 < parts.size()) {
      if (f->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || f->is_repeated()) {
        return absl::InvalidArgumentError(override_error(
            assignment,
            absl::StrCat("unknown field '", path, "': '", prefix, "' is not a section")));
      }
      msg = msg->GetReflection()->MutableMessage(msg, f);
      continue;
    }
    if (append && !f->is_repeated())
      return absl::InvalidArgumentError(
          override_error(assignment, path + " is not a list (+= appends to a list field)"));
    if (f->is_repeated() && !append) msg->GetReflection()->ClearField(msg, f);  // "=" replaces
    if (f->is_repeated() && value.size() >= 2 && value.front() == '[' && value.back() == ']') {
      msg->GetReflection()->ClearField(msg, f);
      const std::string inner = value.substr(1, value.size() - 2);
      if (absl::StripAsciiWhitespace(inner).empty()) return absl::OkStatus();
      for (absl::string_view item : absl::StrSplit(inner, ',')) {
        absl::Status s = set_scalar(msg, f, std::string(item), path, assignment);
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    }
    return set_scalar(msg, f, value, path, assignment);
  }
  return absl::InvalidArgumentError(override_error(assignment, "empty path"));
}

absl::Status apply_overrides(const std::vector<std::string>& assignments, TrainConfig* config) {
  for (const std::string& a : assignments) {
    absl::Status s = apply_override(a, config);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace kiln
