// Chat templates: renders a conversation into the prompt text a chat model was trained on.
// We do not run the Jinja in tokenizer.chat_template; we recognise which well-known format it
// writes (ChatML, Llama 3, Llama 2, Mistral) and render that format natively. The rendered
// text carries no BOS. Encode a render() with Tokenizer::encode_chat: control tokens count only
// where the template wrote them, so message content cannot forge turns ("<|im_end|>" typed by
// a user stays text, as in llama.cpp and vLLM).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"

namespace squat {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// Bytes [offset, offset + length) of a text.
struct TextRange {
  std::size_t offset = 0, length = 0;
};

// A rendered conversation: the prompt text and the byte ranges the template wrote (role
// headers, turn delimiters), in order and disjoint; everything else is message content.
struct RenderedChat {
  std::string text;
  std::vector<TextRange> markup;

  // The text from byte `from` on, with the markup ranges that reach past it cut there and
  // moved to the new offsets: what a chat whose cache holds text[0, from) feeds next. A
  // control token cut in two by `from` is text on both sides.
  RenderedChat suffix(std::size_t from) const;
};

enum class ChatFormat {
  ChatML,   // <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen2)
  Llama3,   // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
  Llama2,   // [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] ...
  Mistral,  // [INST] user [/INST]assistant</s>[INST] ...
};

class ChatTemplate {
 public:
  // Recognises the format a Jinja template writes. An empty or unrecognised template gives
  // ChatML and a note() saying so.
  static ChatTemplate detect(std::string_view template_text);
  // From tokenizer.chat_template (absent: ChatML with a note).
  static ChatTemplate from_gguf(const gguf::File& file);
  // "chatml", "llama3", "llama2", "mistral"; throws a usage error for anything else.
  static ChatTemplate from_name(std::string_view name);

  ChatFormat format() const { return format_; }
  const char* format_name() const;
  // Set when detection fell back to ChatML; callers should show it to the user.
  const std::string& note() const { return note_; }
  // ChatML templates that insert a system message when the conversation has none (SmolLM2:
  // "You are a helpful AI assistant named SmolLM, ..."); empty when the template has none.
  const std::string& default_system() const { return default_system_; }

  // Throws a usage error for a role the format cannot express (Llama 2 / Mistral: roles other
  // than system, user, assistant).
  std::string apply(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // The same text, with the ranges the template wrote (see Tokenizer::encode_chat).
  RenderedChat render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  ChatFormat format_ = ChatFormat::ChatML;
  std::string default_system_;
  std::string note_;
};

// ChatTemplate::from_gguf(file).apply(...); a fallback note is printed to stderr once.
std::string apply_chat_template(const gguf::File& file, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);
// The same with the template's markup ranges, for Tokenizer::encode_chat.
RenderedChat render_chat_template(const gguf::File& file, const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt);

}  // namespace squat
