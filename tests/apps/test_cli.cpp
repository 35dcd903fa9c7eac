// Runs the `squat` binary on bad input and checks the contract: exit status 1 (runtime) or 2
// (usage), one clear message naming what was wrong, no crash.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "run_shell.h"
#include "test_files.h"

namespace {

using squat::testing::temp_path;

using squat::testing::run_squat;
using Result = squat::testing::ShellResult;

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

std::vector<char> model_prefix(std::size_t n) {
  std::ifstream in(SQUAT_TEST_MODEL, std::ios::binary);
  std::vector<char> bytes(n);
  in.read(bytes.data(), std::streamsize(n));
  bytes.resize(std::size_t(in.gcount()));
  return bytes;
}

TEST(Cli, MissingModelFile) {
  const Result r = run_squat("run -m /nonexistent/model.gguf -p hi -n 1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("/nonexistent/model.gguf"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("No such file"), std::string::npos) << r.output;
}

TEST(Cli, WrongMagic) {
  const std::string path = temp_path("wrong_magic.gguf");
  write_bytes(path,
              {'G', 'G', 'M', 'L', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  const Result r = run_squat("run -m " + path + " -p hi -n 1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("magic"), std::string::npos) << r.output;
  std::filesystem::remove(path);
}

TEST(Cli, TruncatedModel) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  // Cut inside the metadata, and inside the tensor data.
  for (std::size_t size : {std::size_t(3000), std::size_t(40'000'000)}) {
    const std::string path = temp_path("truncated.gguf");
    write_bytes(path, model_prefix(size));
    const Result r = run_squat("run -m " + path + " -p hi -n 1");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find(path), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Segmentation"), std::string::npos) << r.output;
    std::filesystem::remove(path);
  }
}

// A model whose weights hold NaN: one Q4_1 block scale of the first layer's query matrix, or a
// norm weight, set to fp16 NaN.
TEST(Cli, NanInWeights) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const squat::gguf::File model = squat::gguf::File::open(SQUAT_TEST_MODEL);
  for (const char* tensor : {"blk.0.attn_q.weight", "blk.3.ffn_norm.weight"}) {
    const squat::gguf::TensorInfo& info = model.tensor(tensor);
    const std::size_t offset = model.data_offset() + info.offset;
    std::vector<char> bytes = model_prefix(std::size_t(model.size()));
    if (info.type == squat::gguf::TensorType::F32) {
      const uint32_t nan_bits = 0x7fc00000u;
      std::memcpy(&bytes[offset], &nan_bits, 4);
    } else {
      bytes[offset] = 0x00;  // fp16 0x7e00: NaN (little-endian)
      bytes[offset + 1] = 0x7e;
    }
    const std::string path = temp_path("nan.gguf");
    write_bytes(path, bytes);
    const Result r = run_squat("run -m " + path + " -p hi -n 2 -t 2");
    EXPECT_EQ(r.status, 1) << tensor << ": " << r.output;
    EXPECT_NE(r.output.find("NaN"), std::string::npos) << tensor << ": " << r.output;
    std::filesystem::remove(path);
  }
}

TEST(Cli, BadFlagsAreUsageErrors) {
  EXPECT_EQ(run_squat("run -p hi").status, 2);  // no model
  EXPECT_EQ(run_squat("run -m x.gguf -p hi --threads -4").status, 2);
  EXPECT_EQ(run_squat("run -m x.gguf -p hi --no-such-flag").status, 2);
  EXPECT_EQ(run_squat("bogus-command").status, 2);
}

TEST(Cli, BadSamplingValuesNameTheFlag) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const Result r = run_squat(std::string("run -m ") + SQUAT_TEST_MODEL + " -p hi --top-p 3");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--top-p"), std::string::npos) << r.output;
}

TEST(Cli, PromptLongerThanTheContext) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const Result r = run_squat(std::string("run -m ") + SQUAT_TEST_MODEL +
                             " -c 8 -n 4 -p \"one two three four five six seven eight nine ten\"");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("context"), std::string::npos) << r.output;
}

TEST(Cli, GreedyRunMentionsParis) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const Result r = run_squat(std::string("run -m ") + SQUAT_TEST_MODEL +
                             " -p \"The capital of France is\" -n 12 --temp 0 -t 2");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
}

// The same greedy run with --stop Paris: generation ends there and the stop string is not printed.
TEST(Cli, RunStopsAtAStopStringWithoutPrintingIt) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const Result r = run_squat(std::string("run -m ") + SQUAT_TEST_MODEL +
                             " -p \"The capital of France is\" -n 12 --temp 0 -t 2 --stop Paris"
                             " --no-display-prompt");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("Paris"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("decode: "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("decode: 12 tokens"), std::string::npos) << "stopped early\n" << r.output;
}

TEST(Cli, ChatKeepsTheConversationInTheCache) {
  if (!std::filesystem::exists(SQUAT_TEST_MODEL)) GTEST_SKIP() << "default model not found";
  const std::string command = std::string("printf 'What is 2+2?\\nAnd 3+3?\\n' | ") +
                              SQUAT_BINARY_DIR + "/squat chat -m " + SQUAT_TEST_MODEL +
                              " -n 24 --temp 0 -t 2 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (std::size_t got = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, got);
  const int raw = pclose(pipe);
  EXPECT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) == 0) << output;
  // Two replies, each followed by the tokens in the context, which grow with the conversation.
  std::vector<long> sizes;
  for (std::size_t at = output.find("context "); at != std::string::npos;
       at = output.find("context ", at + 1)) {
    sizes.push_back(std::stol(output.substr(at + 8)));
  }
  ASSERT_EQ(sizes.size(), 2u) << output;
  EXPECT_GT(sizes[1], sizes[0]) << output;
  EXPECT_NE(output.find('4'), std::string::npos) << output;
}

}  // namespace
