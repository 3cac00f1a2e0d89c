// File and process helpers the launch/ tests share, written once: fresh temporary folders, whole
// files read and written as bytes, and the kiln binary run with its output captured.
#pragma once

#include <string>
#include <utility>

namespace kiln::testing {

// An empty folder ::testing::TempDir()/kiln_<name> (removed first if it exists). Give each test
// file its own prefix in `name`: ctest runs the tests of one binary in parallel processes.
std::string fresh_dir(const std::string& name);

// The whole file as bytes ("" when it cannot be read).
std::string read_bytes(const std::string& path);

// Replaces the file's contents with `bytes`.
void write_bytes(const std::string& path, const std::string& bytes);

// Runs `KILN_BIN args` through the shell with stderr folded into stdout: {exit status (128 +
// signal when killed), output}.
std::pair<int, std::string> run_kiln(const std::string& args);

}  // namespace kiln::testing
