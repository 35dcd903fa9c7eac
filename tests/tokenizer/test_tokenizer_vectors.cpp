// Conformance with llama.cpp's tokenizer test vectors (SQUAT_SHARED_DATA/tokenizer): for each
// vocabulary, the .inp file holds test strings separated by "\n__ggml_vocab_test__\n" (the
// file ends with one), the .out file one line of space-separated ids per string, without BOS.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace squat {
namespace {

const std::string kDataDir = std::string(SQUAT_SHARED_DATA) + "/tokenizer/";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> load_cases(const std::string& vocab_file) {
  const std::string inputs = read_file(kDataDir + vocab_file + ".inp");
  const std::string outputs = read_file(kDataDir + vocab_file + ".out");
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  std::size_t pos = 0;
  while (true) {
    const std::size_t next = inputs.find(separator, pos);
    if (next == std::string::npos) break;
    texts.push_back(inputs.substr(pos, next - pos));
    pos = next + separator.size();
  }
  EXPECT_EQ(pos, inputs.size()) << "text after the last separator";
  std::vector<Case> cases;
  std::istringstream lines(outputs);
  std::string line;
  std::size_t index = 0;
  while (std::getline(lines, line)) {
    if (index >= texts.size()) {
      ADD_FAILURE() << "more id lines than texts";
      break;
    }
    Case c{texts[index++], {}};
    std::istringstream numbers(line);
    int32_t id;
    while (numbers >> id) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  EXPECT_EQ(cases.size(), texts.size());
  return cases;
}

std::string show(const std::vector<int32_t>& ids) {
  std::string out;
  for (const int32_t id : ids) {
    out += ' ';
    out += std::to_string(id);
  }
  return out;
}

class VocabVectors : public ::testing::TestWithParam<const char*> {};

TEST_P(VocabVectors, MatchLlamaCpp) {
  const std::string name = GetParam();
  const std::string path = kDataDir + name;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  const gguf::File file = gguf::File::open(path);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const std::vector<Case> cases = load_cases(name);
  ASSERT_EQ(cases.size(), 46u);  // both files hold 46 strings
  int matched = 0;
  for (const Case& c : cases) {
    const std::vector<int32_t> ids = tok.encode(c.text, false, false);
    EXPECT_EQ(show(ids), show(c.ids)) << "text: \"" << c.text << "\"";
    matched += ids == c.ids;
    // Decoding gives the text back (SentencePiece: minus the space it prepended).
    EXPECT_EQ(tok.decode(ids), c.text);
  }
  EXPECT_EQ(matched, int(cases.size()));
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, VocabVectors,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-spm.gguf"),
                         [](const auto& info) {
                           return std::string(info.param).find("gpt-2") != std::string::npos
                                      ? std::string("Gpt2")
                                      : std::string("LlamaSpm");
                         });

TEST(VocabMetadata, Gpt2) {
  const std::string path = kDataDir + "ggml-vocab-gpt-2.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  const Tokenizer tok = Tokenizer::from_gguf(gguf::File::open(path));
  EXPECT_EQ(tok.kind(), VocabKind::BytePairGpt2);
  EXPECT_EQ(tok.pre(), "gpt-2");
  EXPECT_EQ(tok.vocab_size(), 50257u);
  EXPECT_EQ(tok.bos(), 50256);
  EXPECT_EQ(tok.eos(), 50256);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_TRUE(tok.is_eog(50256));
  EXPECT_EQ(tok.token_text(50256), "<|endoftext|>");
  // add_bos_token is absent: a byte-level BPE vocabulary adds nothing.
  EXPECT_EQ(tok.encode("Hello world", true, false), (std::vector<int32_t>{15496, 995}));
}

TEST(VocabMetadata, LlamaSpm) {
  const std::string path = kDataDir + "ggml-vocab-llama-spm.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << path;
  const Tokenizer tok = Tokenizer::from_gguf(gguf::File::open(path));
  EXPECT_EQ(tok.kind(), VocabKind::SentencePiece);
  EXPECT_EQ(tok.vocab_size(), 32000u);
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_EQ(tok.unk(), 0);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_TRUE(tok.add_space_prefix());
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
  // add_special puts BOS first; parse_special turns "</s>" into the EOS token.
  EXPECT_EQ(tok.encode("Hello world", true, false), (std::vector<int32_t>{1, 15043, 3186}));
  const std::vector<int32_t> ids = tok.encode("Hello</s>", false, true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok.token_to_piece(13), "\n");  // <0x0A>
  EXPECT_EQ(tok.token_to_piece(15043), " Hello");
  EXPECT_EQ(tok.decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(tok.decode({1, 15043, 3186, 2}, true), "<s> Hello world</s>");
}

}  // namespace
}  // namespace squat
