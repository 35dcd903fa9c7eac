#include "core/process_memory.h"

#include <sys/resource.h>

#include <fstream>
#include <sstream>
#include <string>

namespace squat {

namespace {

// A "Name:   N kB" line of /proc/self/status, in bytes (0 when absent).
std::size_t status_field(const char* name) {
  std::ifstream status("/proc/self/status");
  const std::string prefix = std::string(name) + ":";
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(prefix, 0) == 0) {
      std::istringstream fields(line.substr(prefix.size()));
      std::size_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

}  // namespace

std::size_t resident_set_bytes() { return status_field("VmRSS"); }

std::size_t peak_resident_set_bytes() {
  if (const std::size_t peak = status_field("VmHWM")) return peak;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::size_t(usage.ru_maxrss) * 1024;
}

void reset_peak_resident_set() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace squat
