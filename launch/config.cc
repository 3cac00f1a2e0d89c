// Config loading: textproto parsing with located errors, the load pipeline (parse, overrides,
// resolve, validate) and printing. Errors: config_errors.cc; overrides: config_overrides.cc;
// defaults: config_resolve.cc; checks: config_validate.cc.
#include "launch/config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/text_format.h"
#include "launch/config_errors.h"

namespace kiln {

absl::StatusOr<TrainConfig> parse_config(const std::string& text, const std::string& filename) {
  TrainConfig config;
  config_internal::ParseErrorCollector errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (parser.ParseFromString(text, &config)) return config;
  std::vector<std::string> lines;
  for (const config_internal::ParseError& e : errors.errors) {
    lines.push_back(config_internal::locate_parse_error(text, filename, e));
  }
  if (lines.empty()) lines.push_back(filename + ": not a valid TrainConfig textproto");
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

absl::StatusOr<TrainConfig> load_config(const std::string& path,
                                        const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return absl::InvalidArgumentError(
        absl::StrCat("config file '", path, "' is a directory (give a .textproto file)"));
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file '", path, "': cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<TrainConfig> cfg = parse_config(text.str(), path);
  if (!cfg.ok()) return cfg.status();
  absl::Status s = apply_overrides(overrides, &*cfg);
  if (!s.ok()) return s;
  s = resolve_config(&*cfg);
  if (s.ok()) s = validate_config(*cfg);
  if (!s.ok()) {  // every "FIELD: reason" line prefixed with the file
    std::vector<std::string> lines = absl::StrSplit(s.message(), '\n');
    for (std::string& line : lines) line = absl::StrCat(path, ": ", line);
    return absl::Status(s.code(), absl::StrJoin(lines, "\n"));
  }
  return cfg;
}

std::string print_config(const TrainConfig& config) {
  std::string out;
  google::protobuf::TextFormat::Printer printer;
  printer.PrintToString(config, &out);
  return out;
}

}  // namespace kiln
