#include "tokenizer/chat_template.h"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <set>

#include "core/error.h"

namespace squat {

namespace {

std::string trim(std::string_view text) {
  const char* space = " \t\n\r\f\v";
  const std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string_view::npos) return {};
  const std::size_t end = text.find_last_not_of(space);
  return std::string(text.substr(begin, end - begin + 1));
}

// The system message a ChatML template writes when the conversation has none: the text of a
// literal "<|im_start|>system\n...<|im_end|>" in a template that tests "!= 'system'".
std::string chatml_default_system(std::string_view tmpl) {
  if (tmpl.find("!= 'system'") == std::string_view::npos &&
      tmpl.find("!= \"system\"") == std::string_view::npos) {
    return {};
  }
  const std::string_view head = "<|im_start|>system";
  for (std::size_t pos = tmpl.find(head); pos != std::string_view::npos;
       pos = tmpl.find(head, pos + 1)) {
    std::size_t start = pos + head.size();
    if (tmpl.substr(start, 1) == "\n") {
      start += 1;
    } else if (tmpl.substr(start, 2) == "\\n") {
      start += 2;
    } else {
      continue;
    }
    const std::size_t end = tmpl.find("<|im_end|>", start);
    if (end == std::string_view::npos) continue;
    const std::string_view body = tmpl.substr(start, end - start);
    // A literal message, not an expression such as "' + messages[0]['content'] + '".
    if (body.find_first_of("'\"{}") != std::string_view::npos) continue;
    std::string text;
    for (std::size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        text += '\n';
        ++i;
      } else {
        text += body[i];
      }
    }
    return text;
  }
  return {};
}

}  // namespace

ChatTemplate ChatTemplate::detect(std::string_view tmpl) {
  ChatTemplate result;
  if (tmpl.find("<|im_start|>") != std::string_view::npos) {
    result.format_ = ChatFormat::ChatML;
    result.default_system_ = chatml_default_system(tmpl);
  } else if (tmpl.find("<|start_header_id|>") != std::string_view::npos) {
    result.format_ = ChatFormat::Llama3;
  } else if (tmpl.find("[INST]") != std::string_view::npos) {
    result.format_ =
        tmpl.find("<<SYS>>") != std::string_view::npos ? ChatFormat::Llama2 : ChatFormat::Mistral;
  } else if (tmpl.empty()) {
    result.format_ = ChatFormat::ChatML;
    result.note_ = "the model has no chat template (tokenizer.chat_template); using ChatML";
  } else {
    result.format_ = ChatFormat::ChatML;
    result.note_ =
        "the model's chat template (tokenizer.chat_template) is not one squat recognises "
        "(ChatML, Llama 3, Llama 2, Mistral); using ChatML, which may not match the model";
  }
  return result;
}

ChatTemplate ChatTemplate::from_gguf(const gguf::File& file) {
  return detect(file.get_string_or("tokenizer.chat_template", ""));
}

ChatTemplate ChatTemplate::from_name(std::string_view name) {
  ChatTemplate result;
  if (name == "chatml") {
    result.format_ = ChatFormat::ChatML;
  } else if (name == "llama3") {
    result.format_ = ChatFormat::Llama3;
  } else if (name == "llama2") {
    result.format_ = ChatFormat::Llama2;
  } else if (name == "mistral") {
    result.format_ = ChatFormat::Mistral;
  } else {
    fail_usage("unknown chat template \"{}\" (expected chatml, llama3, llama2 or mistral)", name);
  }
  return result;
}

const char* ChatTemplate::format_name() const {
  switch (format_) {
    case ChatFormat::ChatML:
      return "chatml";
    case ChatFormat::Llama3:
      return "llama3";
    case ChatFormat::Llama2:
      return "llama2";
    case ChatFormat::Mistral:
      return "mistral";
  }
  return "chatml";
}

RenderedChat RenderedChat::suffix(std::size_t from) const {
  RenderedChat out;
  if (from >= text.size()) return out;
  out.text = text.substr(from);
  for (const TextRange& r : markup) {
    const std::size_t end = r.offset + r.length;
    if (end <= from) continue;
    const std::size_t begin = std::max(r.offset, from);
    out.markup.push_back({begin - from, end - begin});
  }
  return out;
}

namespace {

// Builds the rendered text and remembers which bytes the template itself wrote.
class ChatWriter {
 public:
  void markup(const std::string& text) {
    if (text.empty()) return;
    if (!out_.markup.empty() &&
        out_.markup.back().offset + out_.markup.back().length == out_.text.size()) {
      out_.markup.back().length += text.size();
    } else {
      out_.markup.push_back({out_.text.size(), text.size()});
    }
    out_.text += text;
  }
  void content(const std::string& text) { out_.text += text; }
  RenderedChat take() { return std::move(out_); }

 private:
  RenderedChat out_;
};

}  // namespace

std::string ChatTemplate::apply(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) const {
  return render(messages, add_generation_prompt).text;
}

RenderedChat ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) const {
  ChatWriter out;
  switch (format_) {
    case ChatFormat::ChatML: {
      if (!default_system_.empty() && (messages.empty() || messages.front().role != "system")) {
        out.markup("<|im_start|>system\n");
        out.content(default_system_);
        out.markup("<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        out.markup("<|im_start|>" + m.role + "\n");
        out.content(m.content);
        out.markup("<|im_end|>\n");
      }
      if (add_generation_prompt) out.markup("<|im_start|>assistant\n");
      return out.take();
    }
    case ChatFormat::Llama3: {
      for (const ChatMessage& m : messages) {
        out.markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        out.content(trim(m.content));
        out.markup("<|eot_id|>");
      }
      if (add_generation_prompt) out.markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
      return out.take();
    }
    case ChatFormat::Llama2:
    case ChatFormat::Mistral: {
      std::size_t first = 0;
      std::string system;
      if (!messages.empty() && messages.front().role == "system") {
        system = messages.front().content;
        first = 1;
      }
      const bool llama2 = format_ == ChatFormat::Llama2;
      bool any_user = false;
      for (std::size_t i = first; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          // The template writes BOS before every [INST]; the first comes from the tokenizer.
          if (llama2 && any_user) out.markup("<s>");
          out.markup("[INST] ");
          const bool with_system = !any_user && !system.empty();
          if (llama2) {
            if (with_system) {
              // The template trims the whole turn, system block included: split what it
              // keeps back into the block's markup and the two contents.
              const std::string close = "\n<</SYS>>\n\n";
              const std::string full = trim("<<SYS>>\n" + system + close + m.content);
              const std::string rest = full.substr(8);
              out.markup("<<SYS>>\n");
              if (rest.size() >= system.size() + close.size()) {
                out.content(system);
                out.markup(close);
                out.content(rest.substr(system.size() + close.size()));
              } else {
                out.content(rest);  // whitespace-only user content trimmed into the block
              }
            } else {
              out.content(trim(m.content));
            }
          } else {
            if (with_system) {
              out.content(system);
              out.markup("\n\n");
            }
            out.content(m.content);
          }
          out.markup(" [/INST]");
          any_user = true;
        } else if (m.role == "assistant") {
          if (llama2) {
            out.markup(" ");
            out.content(trim(m.content));
            out.markup(" </s>");
          } else {
            out.content(m.content);
            out.markup("</s>");
          }
        } else {
          fail_usage(
              "the {} chat format has no role \"{}\" (system first, then user and "
              "assistant)",
              format_name(), m.role);
        }
      }
      (void)add_generation_prompt;  // the prompt already ends with [/INST]
      return out.take();
    }
  }
  return out.take();
}

std::string apply_chat_template(const gguf::File& file, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  return render_chat_template(file, messages, add_generation_prompt).text;
}

RenderedChat render_chat_template(const gguf::File& file, const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt) {
  const ChatTemplate chat = ChatTemplate::from_gguf(file);
  if (!chat.note().empty()) {
    static std::mutex mutex;
    static std::set<std::string> noted;
    const std::lock_guard<std::mutex> lock(mutex);
    if (noted.insert(file.path()).second) {
      std::fprintf(stderr, "note: %s: %s\n", file.path().c_str(), chat.note().c_str());
    }
  }
  return chat.render(messages, add_generation_prompt);
}

}  // namespace squat
