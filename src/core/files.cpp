#include "core/files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/error.h"

namespace squat {

void write_file_atomically(const std::string& path, std::string_view bytes) {
  const std::string temp = path + ".partial";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (out) out.write(bytes.data(), std::streamsize(bytes.size()));
    if (!out) {
      const int error = errno;
      out.close();
      std::remove(temp.c_str());
      fail("cannot write '{}': {}", path, std::strerror(error));
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temp.c_str());
    fail("cannot write '{}': {}", path, std::strerror(error));
  }
}

}  // namespace squat
