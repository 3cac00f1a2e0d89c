// Config agreement across ranks (config_agree.h): a hash broadcast from rank 0, and on a mismatch
// the differing rank's text, sized first, to name the field.
#include "launch/config_agree.h"

#include <cstring>
#include <sstream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/tensor.h"
#include "launch/config.h"

namespace kiln::launch {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Rank `root`'s text on every rank: its length first (the same size on all ranks), then the
// bytes in an i64 tensor of that many bytes rounded up.
std::string broadcast_text(parallel::Communicator& world, const std::string& text, int root) {
  Tensor len = Tensor::from_vector({static_cast<double>(text.size())}, {1}, DType::kI64);
  world.broadcast(len, root);
  const int64_t n = len.data<int64_t>()[0];
  Tensor bytes = Tensor::zeros({(n + 7) / 8 + 1}, DType::kI64);
  if (world.rank() == root) std::memcpy(bytes.raw(), text.data(), text.size());
  world.broadcast(bytes, root);
  return std::string(static_cast<const char*>(bytes.raw()), static_cast<size_t>(n));
}

// The printed config's lines as (dotted path of the field, line), sections opened by "name {".
std::vector<std::pair<std::string, std::string>> field_lines(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::vector<std::string> path;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const std::string t(absl::StripAsciiWhitespace(line));
    if (t == "}") {
      if (!path.empty()) path.pop_back();
      continue;
    }
    const size_t sep = t.find_first_of(": {");
    const std::string name = t.substr(0, sep);
    if (absl::EndsWith(t, "{")) {
      path.push_back(name);
      continue;
    }
    std::vector<std::string> full = path;
    full.push_back(name);
    out.emplace_back(absl::StrJoin(full, "."), t);
  }
  return out;
}

}  // namespace

ConfigDifference first_difference(const std::string& mine, const std::string& theirs) {
  const auto a = field_lines(mine), b = field_lines(theirs);
  for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
    if (i < a.size() && i < b.size() && a[i] == b[i]) continue;
    auto value = [](const std::vector<std::pair<std::string, std::string>>& v,
                    const std::string& field) {
      for (const auto& [f, line] : v)
        if (f == field) return line;
      return std::string("(unset)");
    };
    // The field that differs: a's at this position unless b lacks a field that a has here.
    std::string field = i < a.size() ? a[i].first : b[i].first;
    if (i < a.size() && i < b.size() && value(b, field) == a[i].second) field = b[i].first;
    return {field, value(a, field), value(b, field)};
  }
  return {};
}

absl::Status check_config_agreement(const TrainConfig& cfg, parallel::Communicator& world) {
  if (world.size() <= 1) return absl::OkStatus();
  const std::string text = print_config(cfg);
  Tensor hash = Tensor::zeros({1}, DType::kI64);
  const uint64_t mine = fnv1a(text);
  std::memcpy(hash.raw(), &mine, 8);
  world.broadcast(hash, 0);
  const bool same = std::memcmp(hash.raw(), &mine, 8) == 0;
  // The highest rank that differs (0: none); every rank learns it, so all stop together.
  const int bad = static_cast<int>(
      world.all_reduce_scalar(same ? 0.0 : world.rank(), parallel::ReduceOp::kMax));
  if (bad == 0) return absl::OkStatus();
  const std::string theirs = broadcast_text(world, text, bad);
  const std::string root = broadcast_text(world, text, 0);
  const ConfigDifference d = first_difference(theirs, root);
  auto value = [](const std::string& line) {  // "lr: 0.002" -> "0.002"
    const size_t colon = line.find(':');
    return colon == std::string::npos
               ? line
               : std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  };
  return absl::FailedPreconditionError(
      absl::StrCat("the ranks were given different configs: ", d.field, " is ", value(d.mine),
                   " on rank ", bad, " but ", value(d.theirs),
                   " on rank 0 (the first field that differs); every rank must read "
                   "the same config and --set flags"));
}

}  // namespace kiln::launch
