#include "core/files.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <utility>

#include "core/error.h"

namespace squat {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), temp_(path_ + ".partial") {
  out_.open(temp_, std::ios::binary | std::ios::trunc);
  if (!out_) fail("cannot write '{}': {}", path_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  out_.close();
  std::remove(temp_.c_str());
}

void AtomicFile::fail_write(int error) {
  out_.close();
  std::remove(temp_.c_str());
  committed_ = true;  // nothing left to clean up
  fail("cannot write '{}': {}", path_, std::strerror(error));
}

void AtomicFile::write(const void* bytes, std::size_t size) {
  out_.write(static_cast<const char*>(bytes), std::streamsize(size));
  if (!out_) fail_write(errno);
}

void AtomicFile::commit() {
  out_.close();
  if (!out_) fail_write(errno);
  if (std::rename(temp_.c_str(), path_.c_str()) != 0) fail_write(errno);
  committed_ = true;
}

std::string read_text_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} '{}': {}", what, path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail("cannot read {} '{}': {}", what, path, std::strerror(errno));
  return text.str();
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

}  // namespace squat
