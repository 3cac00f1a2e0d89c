// Whether a checkpoint's model fits the model being built: the ModelConfig fields that differ
// between a stored config and the current one, and the full check (names, shapes) run before a
// checkpoint is loaded (declared in launch/checkpoint.h).
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/text_format.h"
#include "launch/checkpoint.h"

namespace kiln::launch {
namespace {

Shape entry_shape(const TensorEntry& e) { return Shape(e.shape().begin(), e.shape().end()); }

std::string field_value(const google::protobuf::Message& m,
                        const google::protobuf::FieldDescriptor* f) {
  std::string s;
  google::protobuf::TextFormat::PrintFieldValueToString(m, f, -1, &s);
  return s;
}

}  // namespace

std::vector<std::string> model_field_differences(const ModelConfig& stored,
                                                 const ModelConfig& current, bool shape_fields) {
  static const std::set<std::string> kShape = {
      "family",     "n_layer", "n_head",          "n_kv_head",          "d_model",    "d_ff",
      "vocab_size", "bias",    "tied_embeddings", "vocab_pad_multiple", "max_seq_len"};
  static const std::set<std::string> kIgnore = {"preset"};
  std::vector<std::string> out;
  const auto* desc = ModelConfig::descriptor();
  const auto* refl = ModelConfig::GetReflection();
  for (int i = 0; i < desc->field_count(); ++i) {
    const auto* f = desc->field(i);
    if (kIgnore.count(f->name()) || (kShape.count(f->name()) > 0) != shape_fields) continue;
    if (f->is_repeated()) continue;
    const std::string a = field_value(stored, f), b = field_value(current, f);
    if (a != b && (refl->HasField(stored, f) || refl->HasField(current, f)))
      out.push_back(absl::StrCat("model.", f->name(), ": ", a, " in the checkpoint, ", b, " here"));
  }
  return out;
}

absl::Status check_model_matches(const Manifest& m, const ModelConfig& model,
                                 const std::vector<nn::Parameter>& params, const std::string& path,
                                 bool stage) {
  std::vector<std::pair<std::string, Shape>> shapes;
  for (const nn::Parameter& p : params) shapes.emplace_back(p.name, p.tensor.shape());
  return check_model_shapes(m, model, shapes, path, stage);
}

absl::Status check_model_shapes(const Manifest& m, const ModelConfig& model,
                                const std::vector<std::pair<std::string, Shape>>& params,
                                const std::string& path, bool stage) {
  std::map<std::string, Shape> stored;
  for (const TensorEntry& e : m.tensors())
    if (e.name().rfind("optim.", 0) != 0) stored.emplace(e.name(), entry_shape(e));
  std::string problem;
  std::set<std::string> mine;
  for (const auto& [name, shape] : params) {
    mine.insert(name);
    auto it = stored.find(name);
    if (it == stored.end()) {
      problem = "it has no tensor '" + name + "'";
      break;
    }
    if (it->second != shape) {
      problem = absl::StrFormat("tensor '%s' is %s there but %s in this model", name,
                                shape_str(it->second), shape_str(shape));
      break;
    }
  }
  if (problem.empty() && !stage)
    for (const auto& [name, shape] : stored)
      if (!mine.count(name)) {
        problem = "it has tensor '" + name + "', which this model does not";
        break;
      }
  if (problem.empty()) return absl::OkStatus();
  std::string msg = absl::StrCat("checkpoint ", path, " does not fit this model: ", problem);
  std::vector<std::string> diffs = model_field_differences(m.config().model(), model, true);
  if (!diffs.empty())
    absl::StrAppend(&msg, "; the model configs differ: ", absl::StrJoin(diffs, "; "));
  return absl::FailedPreconditionError(msg);
}

}  // namespace kiln::launch
