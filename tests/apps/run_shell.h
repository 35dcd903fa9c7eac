// Runs a shell command line (the built `squat` binary, in these tests) and returns what it wrote
// on stdout and its exit status (128 + signal when a signal ended it).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace squat::testing {

struct ShellResult {
  int status = -1;
  std::string output;
};

inline ShellResult run_shell(const std::string& command) {
  ShellResult result;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  while (std::size_t got = fread(buffer, 1, sizeof buffer, pipe)) result.output.append(buffer, got);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  return result;
}

// `squat ARGS` with stderr merged into the output.
inline ShellResult run_squat(const std::string& args) {
  return run_shell(std::string(SQUAT_BINARY_DIR) + "/squat " + args + " 2>&1");
}

}  // namespace squat::testing
