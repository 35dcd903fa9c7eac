// Files the command-line tests write and read back: a temporary path per test process, the
// bytes of a file, a JSON file.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace squat::testing {

// A path in the temporary folder, unique to this process (ctest runs tests in parallel, each
// in its own process) and to `name`.
inline std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("squat_test_" + std::to_string(getpid()) + "_" + name))
      .string();
}

// The whole file ("" when it cannot be read).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// The file parsed as JSON (throws nlohmann::json::parse_error when it is not).
inline nlohmann::json read_json(const std::string& path) {
  return nlohmann::json::parse(read_file(path));
}

}  // namespace squat::testing
