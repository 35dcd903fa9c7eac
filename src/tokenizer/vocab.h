// The tokenizer's view of a vocabulary, independent of where it came from: Tokenizer::from_gguf
// fills it from tokenizer.ggml.* metadata, tests build one in memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace squat {

// tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

enum class VocabKind {
  BytePairGpt2,   // tokenizer.ggml.model = "gpt2": byte-level BPE, merges ranked by order
  SentencePiece,  // tokenizer.ggml.model = "llama": BPE over scores, "▁" for spaces, <0xXX> bytes
};

struct Vocab {
  VocabKind kind = VocabKind::BytePairGpt2;
  std::string pre = "default";      // tokenizer.ggml.pre (byte-level BPE only)
  std::vector<std::string> tokens;  // id -> text
  std::vector<float> scores;        // SentencePiece merge priority; empty means all 0
  std::vector<TokenType> types;     // empty means all Normal
  std::vector<std::string> merges;  // byte-level BPE: "left right", rank = index
  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;  // -1: none
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;    // SentencePiece: prepend "▁" to the text
  std::string name = "vocabulary";  // names the source in error messages
};

}  // namespace squat
