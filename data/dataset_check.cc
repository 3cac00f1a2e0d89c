// check_dataset_files (dataset_manifest.h): the shards a run reads against their manifests.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/dataset_manifest.h"

namespace kiln::data {
namespace {

namespace fs = std::filesystem;

// The files of one dataset (DIR/NAME_*) a run reads, by base name.
struct Group {
  std::string dir, name;
  std::vector<std::string> files;
};

absl::Status check_group(const Group& g, bool checksums, std::vector<std::string>* warnings) {
  const std::string mpath = manifest_path(g.dir, g.name);
  std::error_code ec;
  if (!fs::exists(mpath, ec)) {
    warnings->push_back(absl::StrCat(
        "dataset ", g.dir, "/", g.name, "_*.bin has no manifest (", g.name,
        ".manifest.json; prepared by an older kiln?): whether it is complete is not checked; "
        "run kiln prepare-data again to add one"));
    return absl::OkStatus();
  }
  std::ifstream in(mpath);
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<DatasetManifest> m = parse_manifest(text.str(), mpath);
  if (!m.ok()) return m.status();
  if (!m->complete)
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", g.dir, "/", g.name,
                     " is incomplete (its manifest says complete: false): a kiln "
                     "prepare-data was interrupted while replacing it; run it again"));
  std::map<std::string, const ManifestShard*> listed;
  for (const ManifestShard& s : m->shards) listed[s.file] = &s;
  for (const ManifestShard& s : m->shards)
    if (!fs::exists(g.dir + "/" + s.file, ec))
      return absl::FailedPreconditionError(absl::StrCat("dataset ", g.dir, "/", g.name,
                                                        " is incomplete: its manifest lists ",
                                                        s.file, " but the file is missing"));
  for (const std::string& base : g.files) {
    const std::string path = g.dir + "/" + base;
    auto it = listed.find(base);
    if (it == listed.end())
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is not part of the dataset its manifest ", mpath,
          " describes (left by another prepare-data?); remove it or run kiln prepare-data again"));
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || st.st_size != it->second->bytes)
      return absl::DataLossError(absl::StrFormat(
          "%s is %d bytes but its manifest %s says %d: the shard was changed or truncated; run "
          "kiln prepare-data again",
          path, static_cast<int64_t>(st.st_size), mpath, it->second->bytes));
    if (!checksums) continue;
    absl::StatusOr<uint32_t> crc = file_crc32c(path);
    if (!crc.ok()) return crc.status();
    if (*crc != it->second->crc32c)
      return absl::DataLossError(absl::StrFormat(
          "%s has CRC32C %08x but its manifest %s says %08x: the shard's bytes changed; run kiln "
          "prepare-data again (data.verify_checksums: false skips this check)",
          path, *crc, mpath, it->second->crc32c));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status check_dataset_files(const std::vector<std::string>& files, bool checksums,
                                 std::vector<std::string>* warnings) {
  static const std::regex kShardName(R"(^(.+)_(train|val)_\d{6}\.bin$)");
  std::map<std::pair<std::string, std::string>, Group> groups;
  for (const std::string& f : files) {
    const fs::path p(f);
    const std::string base = p.filename().string();
    std::smatch match;
    if (!std::regex_match(base, match, kShardName)) {
      warnings->push_back(absl::StrCat(f,
                                       " is not named like a kiln prepare-data shard "
                                       "(NAME_train_NNNNNN.bin): not checked against a manifest"));
      continue;
    }
    const std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    Group& g = groups[{dir, match[1].str()}];
    g.dir = dir;
    g.name = match[1].str();
    g.files.push_back(base);
  }
  for (const auto& [key, g] : groups)
    if (absl::Status s = check_group(g, checksums, warnings); !s.ok()) return s;
  return absl::OkStatus();
}

}  // namespace kiln::data
