// Errors the engine reports to users. Every failure a user can cause ends in one Error whose
// message names the file, field or flag and what was expected; the command line maps the kind
// to the exit status (usage: 2, runtime: 1).
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace squat {

enum class ErrorKind { Usage, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_status() const { return kind_ == ErrorKind::Usage ? 2 : 1; }

 private:
  ErrorKind kind_;
};

// A runtime failure (bad file, bad data): exit status 1.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(ErrorKind::Runtime, fmt::format(format, std::forward<Args>(args)...));
}

// A usage failure (bad flag or option value): exit status 2.
template <typename... Args>
[[noreturn]] void fail_usage(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(ErrorKind::Usage, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace squat
