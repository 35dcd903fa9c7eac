// Tokenizer::from_gguf: the tokenizer.ggml.* metadata keys, with llama.cpp's defaults for keys
// a file leaves out.
#include <limits>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace squat {

namespace {

int32_t token_id_or(const gguf::File& file, const std::string& key, int32_t fallback) {
  const gguf::Value* value = file.find(key);
  if (!value) return fallback;
  const int64_t id = file.get_int(key);
  if (id < -1 || id > std::numeric_limits<int32_t>::max()) {
    fail("{}: {} = {} is not a token id", file.path(), key, id);
  }
  return int32_t(id);
}

}  // namespace

Vocab read_vocab(const gguf::File& file) {
  Vocab vocab;
  vocab.name = file.path();
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model == "gpt2") {
    vocab.kind = VocabKind::BytePairGpt2;
    vocab.pre = file.get_string_or("tokenizer.ggml.pre", "default");
    vocab.merges = file.get_string_array("tokenizer.ggml.merges");
    // Validates the name early so the message names the file.
    const PretokenizerSpec spec = pretokenizer_spec(vocab.pre, file.path());
    vocab.add_bos = spec.add_bos;
    vocab.add_eos = false;
    vocab.add_space_prefix = false;
  } else if (model == "llama") {
    vocab.kind = VocabKind::SentencePiece;
    vocab.pre = file.get_string_or("tokenizer.ggml.pre", "default");
    vocab.bos = 1;
    vocab.eos = 2;
    vocab.unk = 0;
    vocab.add_bos = true;
    vocab.add_eos = false;
    vocab.add_space_prefix = true;
  } else {
    fail(
        "{}: tokenizer.ggml.model = \"{}\" is not supported (supported: \"gpt2\" byte-level "
        "BPE, \"llama\" SentencePiece BPE)",
        file.path(), model);
  }

  vocab.tokens = file.get_string_array("tokenizer.ggml.tokens");
  if (file.find("tokenizer.ggml.scores")) {
    const std::vector<double> scores = file.get_float_array("tokenizer.ggml.scores");
    vocab.scores.assign(scores.begin(), scores.end());
  }
  if (file.find("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = file.get_int_array("tokenizer.ggml.token_type");
    vocab.types.reserve(types.size());
    for (const int64_t type : types) {
      // Unknown values count as undefined (decoded like normal tokens), as in llama.cpp.
      vocab.types.push_back(type >= 0 && type <= 6 ? TokenType(type) : TokenType::Undefined);
    }
  }
  if (!vocab.scores.empty() && vocab.scores.size() != vocab.tokens.size()) {
    fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", file.path(), vocab.scores.size(),
         vocab.tokens.size());
  }
  if (!vocab.types.empty() && vocab.types.size() != vocab.tokens.size()) {
    fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", file.path(),
         vocab.types.size(), vocab.tokens.size());
  }

  vocab.bos = token_id_or(file, "tokenizer.ggml.bos_token_id", vocab.bos);
  vocab.eos = token_id_or(file, "tokenizer.ggml.eos_token_id", vocab.eos);
  vocab.eot = token_id_or(file, "tokenizer.ggml.eot_token_id", vocab.eot);
  vocab.eom = token_id_or(file, "tokenizer.ggml.eom_token_id", vocab.eom);
  vocab.unk = token_id_or(file, "tokenizer.ggml.unknown_token_id", vocab.unk);
  vocab.pad = token_id_or(file, "tokenizer.ggml.padding_token_id", vocab.pad);
  const std::size_t n = vocab.tokens.size();
  for (const auto& [key, id] :
       {std::pair<const char*, int32_t>{"bos_token_id", vocab.bos}, {"eos_token_id", vocab.eos}}) {
    if (id >= 0 && std::size_t(id) >= n) {
      fail("{}: tokenizer.ggml.{} = {} is outside the vocabulary of {} tokens", file.path(), key,
           id, n);
    }
  }
  vocab.add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", vocab.add_bos);
  vocab.add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", vocab.add_eos);
  vocab.add_space_prefix =
      file.get_bool_or("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix);
  return vocab;
}

Tokenizer Tokenizer::from_gguf(const gguf::File& file) { return from_vocab(read_vocab(file)); }

}  // namespace squat
