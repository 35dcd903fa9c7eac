// Whole-file helpers. Writes go to a temporary file beside the target and are renamed into
// place, so a failed or interrupted write never leaves a half-written file under the name.
#pragma once

#include <fstream>
#include <string>
#include <string_view>

namespace squat {

void write_file_atomically(const std::string& path, std::string_view bytes);

// The whole file as bytes; an unreadable file is an error naming `what` ("prompt file") and path.
std::string read_text_file(const std::string& path, std::string_view what);

// A file written in pieces under the temporary name path + ".partial" and renamed to `path`
// by commit(). Destroyed before commit() (an error, an interrupted run), it removes the
// temporary file and leaves whatever was at `path` untouched.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // throws squat::Error when it cannot be created
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* bytes, std::size_t size);  // throws squat::Error on a failed write
  void commit();                                    // flushes, closes and renames into place
  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_write(int error);

  std::string path_, temp_;
  std::ofstream out_;
  bool committed_ = false;
};

}  // namespace squat
