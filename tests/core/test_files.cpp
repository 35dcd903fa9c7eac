// core/files: atomic whole-file and streamed writes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/files.h"

namespace squat {
namespace {

namespace fs = std::filesystem;

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

fs::path fresh_dir(const char* name) {
  const fs::path dir = fs::temp_directory_path() / ("squat_test_files_" + std::string(name));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(Files, CommittedFileReplacesTheTargetAndLeavesNoTemporary) {
  const fs::path dir = fresh_dir("commit"), target = dir / "out.bin";
  write_file_atomically(target.string(), "old");
  {
    AtomicFile file(target.string());
    file.write("new ", 4);
    EXPECT_EQ(read(target), "old");  // nothing visible under the name before commit
    file.write("bytes", 5);
    file.commit();
  }
  EXPECT_EQ(read(target), "new bytes");
  EXPECT_FALSE(fs::exists(dir / "out.bin.partial"));
  fs::remove_all(dir);
}

TEST(Files, AbandonedFileKeepsTheOldTargetAndRemovesItsTemporary) {
  const fs::path dir = fresh_dir("abandon"), target = dir / "out.bin";
  write_file_atomically(target.string(), "keep me");
  try {
    AtomicFile file(target.string());
    file.write("half", 4);
    throw std::runtime_error("interrupted");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read(target), "keep me");
  EXPECT_FALSE(fs::exists(dir / "out.bin.partial"));
  fs::remove_all(dir);
}

TEST(Files, UnwritablePathIsAnErrorNamingIt) {
  const std::string path = "/nonexistent-squat-dir/out.json";
  try {
    write_file_atomically(path, "x");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace squat
