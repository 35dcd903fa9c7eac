// Text <-> token ids for GGUF vocabularies: byte-level BPE (tokenizer.ggml.model = "gpt2":
// GPT-2, Llama 3, SmolLM2, Qwen2) and SentencePiece-style BPE ("llama": Llama 2, Mistral),
// with the special-token handling of llama.cpp, whose results the tests compare against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/vocab.h"

namespace squat {

// The tokenizer.ggml.* metadata of a GGUF file, with llama.cpp's defaults for absent keys.
// Throws squat::Error naming the file and key on missing or malformed fields.
Vocab read_vocab(const gguf::File& file);

class Tokenizer {
 public:
  // Reads tokenizer.ggml.* metadata. Throws squat::Error naming the file and key on missing or
  // malformed fields, an unknown tokenizer model or an unknown pre-tokenizer.
  static Tokenizer from_gguf(const gguf::File& file);
  // Builds from a vocabulary in memory (tests, other formats). Same checks as from_gguf.
  static Tokenizer from_vocab(Vocab vocab);

  // add_special: prepend BOS / append EOS as the vocabulary's add_bos_token / add_eos_token say.
  // parse_special: the text of control tokens (e.g. "<|im_start|>") becomes that token rather
  // than characters. User-defined tokens are always matched as whole tokens.
  // Throws squat::Error when the text is not valid UTF-8 (naming the byte offset).
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // A chat prompt: control tokens are recognised only where they lie wholly inside the
  // template's markup ranges; message content is plain text. Same tokens as
  // encode(chat.text, add_special, true) when the content holds no control-token text.
  std::vector<int32_t> encode_chat(const RenderedChat& chat, bool add_special) const;

  // The text of a whole sequence: the concatenated pieces, except that the space a
  // SentencePiece vocabulary prepends (add_space_prefix) is removed from the first piece.
  // Control tokens give nothing unless render_special. Throws on an id out of range.
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  // Bytes of one token: byte-level BPE characters mapped back to bytes, "▁" as a space, <0xXX>
  // as that byte. May be part of a UTF-8 sequence (see StreamDecoder). Control tokens give ""
  // unless render_special; an unknown-type token gives U+FFFD unless render_special.
  std::string token_to_piece(int32_t id, bool render_special = false) const;

  const std::string& token_text(int32_t id) const;  // as stored in the vocabulary
  TokenType token_type(int32_t id) const;
  int32_t find_token(std::string_view text) const;  // id whose text this is, or -1

  int32_t bos() const;  // -1 when the vocabulary has none
  int32_t eos() const;
  int32_t eot() const;
  int32_t unk() const;
  bool add_bos() const;
  bool add_eos() const;
  bool add_space_prefix() const;  // SentencePiece: a space is prepended to the text
  // End of generation: EOS, EOT, EOM and control tokens such as <|im_end|>, <|eot_id|>,
  // <|endoftext|>.
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const;

  std::size_t vocab_size() const;
  VocabKind kind() const;
  const std::string& pre() const;  // byte-level BPE pre-tokenizer name

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::vector<int32_t> encode_impl(std::string_view text, bool add_special, bool parse_special,
                                   const std::vector<TextRange>* markup) const;
  std::shared_ptr<const Impl> impl_;
};

// Turns generated ids into printable text as they arrive: holds back the bytes of an
// incomplete UTF-8 sequence until the rest comes, and drops the SentencePiece leading space
// before the first text, so concatenating push() results equals decode() of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool render_special = false);
  std::string push(int32_t id);  // text now complete (possibly empty)
  // Whatever is still held back; an incomplete sequence at the end becomes U+FFFD.
  std::string finish();

 private:
  const Tokenizer* tokenizer_;
  bool render_special_;
  bool started_ = false;
  std::string pending_;
};

}  // namespace squat
