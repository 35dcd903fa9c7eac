// Byte-level BPE pre-tokenizer: splits text into words with the regular expressions that belong
// to a vocabulary's tokenizer.ggml.pre value (PCRE2, UTF-8 mode, Unicode properties). Each
// expression in turn splits every piece from the previous one into its matches and the text
// between them, so the pieces always cover the input exactly.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace squat {

struct PretokenizerSpec {
  std::vector<std::string> regexes;
  bool ignore_merges = false;  // a word that is itself a token is emitted whole (Llama 3)
  bool add_bos = false;        // default for tokenizer.ggml.add_bos_token
};

// The spec for a tokenizer.ggml.pre value; throws squat::Error naming the value and listing
// the supported ones when unknown. `source` names the vocabulary in the message.
PretokenizerSpec pretokenizer_spec(const std::string& pre, const std::string& source);

// Comma-separated list of the supported pre values, for messages.
std::string supported_pretokenizers();

class Pretokenizer {
 public:
  explicit Pretokenizer(const std::vector<std::string>& regexes);
  ~Pretokenizer();
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  // Appends the pieces of `text` (well-formed UTF-8, not checked here) to `pieces`, in order.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace squat
