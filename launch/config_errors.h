// Internal to the config layer (launch/config*.cc): protobuf's textproto parser errors turned into
// messages that name the file, line, column and field ("FILE:LINE:COL: model.n_layer: ..."), with
// a "did you mean" suggestion for an unknown field and the allowed names for a bad enum value.
// The `--set` parser (config_overrides.cc) shares the suggestions and explanations.
#pragma once

#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"

namespace kiln::config_internal {

// One error of protobuf's text parser.
struct ParseError {
  int line,
      column;  // 0-based, protobuf's tokenizer convention (tabs advance to the next multiple of 8)
  std::string message;
};

// Collects the text parser's errors; warnings are dropped.
class ParseErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    errors.push_back({line, column, message});
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  std::vector<ParseError> errors;
};

// " (did you mean 'n_layer'?)" for the field name of `d` closest to `name`, or "" when none is
// close (edit distance).
std::string suggestion(const google::protobuf::Descriptor* d, const std::string& name);

// The names of `e`'s values except *_UNSPECIFIED, comma separated.
std::string enum_names(const google::protobuf::EnumDescriptor* e);

// A protobuf parser message with a suggestion (unknown field) or the allowed names (bad enum value
// of the TrainConfig field at dotted `path`; "" when unknown) added.
std::string explain(const std::string& message, const std::string& path);

// "FILE:LINE:COL: FIELD.PATH: message" (1-based) for an error of parsing textproto `text`: the
// position moved back to the field the message names, the field path found by scanning `text`.
std::string locate_parse_error(const std::string& text, const std::string& filename,
                               const ParseError& error);

}  // namespace kiln::config_internal
