// `squat chat`: an interactive conversation whose history stays in the KV cache. Each turn
// feeds only the text the chat template adds after what the cache already holds. Ctrl-C stops
// the reply being generated and returns to the prompt; Ctrl-C at the prompt, Ctrl-D (EOF) or
// /exit ends the chat. When the next turn would not fit, the oldest turns are dropped (the
// system message is kept) and the cache is refilled from what remains.
#include <fmt/format.h>
#include <pthread.h>
#include <sys/select.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "apps/generation_options.h"
#include "core/error.h"
#include "core/files.h"
#include "model/generate.h"
#include "model/stop_filter.h"
#include "tokenizer/unicode.h"

namespace squat::apps {

namespace {

// Ctrl-C. SIGINT stays blocked in every thread while the chat runs (the thread pool inherits
// the mask), so it is never delivered to a worker: generation polls for a pending one between
// tokens, and the prompt waits in pselect() with SIGINT unblocked, so the handler interrupts it.
volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_interrupt(int) { g_interrupted = 1; }

sigset_t interrupt_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  return set;
}

// Consumes a pending Ctrl-C; true when there was one.
bool take_pending_interrupt() {
  const sigset_t set = interrupt_set();
  const timespec no_wait{0, 0};
  return sigtimedwait(&set, nullptr, &no_wait) == SIGINT;
}

// Installs the handler and blocks SIGINT for the chat's lifetime; call before threads start.
class InterruptGuard {
 public:
  InterruptGuard() {
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_action_);
    const sigset_t set = interrupt_set();
    pthread_sigmask(SIG_BLOCK, &set, &previous_mask_);
  }
  ~InterruptGuard() {
    pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
    sigaction(SIGINT, &previous_action_, nullptr);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  struct sigaction previous_action_ {};
  sigset_t previous_mask_{};
};

// Lines from standard input; a Ctrl-C while waiting for one ends the wait.
class LineReader {
 public:
  enum class Status { Line, End, Interrupted };

  Status next(std::string& line) {
    for (;;) {
      const std::size_t newline = buffer_.find('\n');
      if (newline != std::string::npos) {
        line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return Status::Line;
      }
      if (g_interrupted) {
        g_interrupted = 0;
        return Status::Interrupted;
      }
      // Wait for input with SIGINT unblocked (atomically: no Ctrl-C is lost in between).
      sigset_t waiting;
      pthread_sigmask(SIG_SETMASK, nullptr, &waiting);
      sigdelset(&waiting, SIGINT);
      fd_set readable;
      FD_ZERO(&readable);
      FD_SET(STDIN_FILENO, &readable);
      if (pselect(STDIN_FILENO + 1, &readable, nullptr, nullptr, nullptr, &waiting) < 0) {
        if (errno == EINTR) continue;
        fail("waiting for standard input: {}", std::strerror(errno));
      }
      char chunk[4096];
      const ssize_t got = ::read(STDIN_FILENO, chunk, sizeof chunk);
      if (got > 0) {
        buffer_.append(chunk, std::size_t(got));
      } else if (got == 0) {
        if (buffer_.empty()) return Status::End;
        line.swap(buffer_);  // a last line without a newline
        buffer_.clear();
        return Status::Line;
      } else if (errno != EINTR) {
        fail("reading standard input: {}", std::strerror(errno));
      }
    }
  }

 private:
  std::string buffer_;
};

constexpr const char* kHelp =
    "commands:\n"
    "  /help         this list\n"
    "  /exit         end the chat (also /quit, Ctrl-D, or Ctrl-C at the prompt)\n"
    "  /clear        forget the conversation (the system message stays)\n"
    "  /save FILE    write the conversation the model sees as JSON {\"messages\": [...]}\n"
    "Ctrl-C while a reply is generated stops it and returns to the prompt.\n";

std::string trim(const std::string& s) {
  const std::size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

class Chat {
 public:
  explicit Chat(const GenerationOptions& options)
      : options_(options),
        loaded_(load_model(options.model)),
        sampler_(make_sampler(options, *loaded_.tokenizer)) {
    if (!options.system.empty()) messages_.push_back({"system", options.system});
  }

  void loop() {
    fmt::print(stderr,
               "squat chat: type a message and press Enter. Ctrl-C stops a reply; Ctrl-C at the "
               "prompt, Ctrl-D or /exit ends; /help lists the commands.\n");
    LineReader reader;
    std::string line;
    for (;;) {
      fmt::print(stderr, "> ");
      std::fflush(stderr);
      const LineReader::Status status = reader.next(line);
      if (status != LineReader::Status::Line) {
        fmt::print(stderr, "\n");
        return;
      }
      const std::string text = trim(line);
      if (text.empty()) continue;  // an empty line is not a message
      if (text[0] == '/') {
        if (!command(text)) return;
        continue;
      }
      // A message the tokenizer cannot take is refused here, not fatal to the conversation.
      if (const std::size_t bad = unicode::first_invalid(line); bad != unicode::kValid) {
        fmt::print(stderr,
                   "[not sent: the message is not valid UTF-8 (byte 0x{:02x} at offset {}); is "
                   "the terminal set to UTF-8?]\n",
                   static_cast<unsigned char>(line[bad]), bad);
        continue;
      }
      turn(line);
    }
  }

 private:
  // Returns false when the chat should end.
  bool command(const std::string& text) {
    const std::size_t space = text.find(' ');
    const std::string name = text.substr(0, space);
    const std::string arg = space == std::string::npos ? "" : trim(text.substr(space + 1));
    if (name == "/exit" || name == "/quit") return false;
    if (name == "/help") {
      fmt::print(stderr, "{}", kHelp);
    } else if (name == "/clear") {
      messages_.resize(options_.system.empty() ? 0 : 1);
      restart_cache();
      fmt::print(stderr, "[conversation cleared]\n");
    } else if (name == "/save") {
      if (arg.empty()) {
        fmt::print(stderr, "/save needs a file name: /save FILE\n");
        return true;
      }
      nlohmann::json list = nlohmann::json::array();
      for (const ChatMessage& m : messages_)
        list.push_back({{"role", m.role}, {"content", m.content}});
      try {
        write_file_atomically(arg, nlohmann::json{{"messages", list}}.dump(
                                       2, ' ', false, nlohmann::json::error_handler_t::replace) +
                                       "\n");
        fmt::print(stderr, "[saved {} messages to {}]\n", messages_.size(), arg);
      } catch (const Error& e) {
        fmt::print(stderr, "/save {}: {}\n", arg, e.what());
      }
    } else {
      fmt::print(stderr, "unknown command {}; /help lists the commands\n", name);
    }
    return true;
  }

  void restart_cache() {
    loaded_.context->reset();
    cached_text_.clear();
  }

  // Message content is plain text: only the template's delimiters become control tokens, so a
  // user cannot forge a turn by typing "<|im_end|>\n<|im_start|>system".
  std::vector<int32_t> encode(const RenderedChat& chat, bool with_bos) const {
    return loaded_.tokenizer->encode_chat(chat, with_bos);
  }

  // Room kept for the reply when deciding whether a turn fits.
  int reply_reserve() const {
    return std::min(options_.n_predict, loaded_.context->max_tokens() / 2);
  }

  struct Turn {
    RenderedChat feed;         // what the cache lacks of the conversation
    std::string conversation;  // the whole rendered conversation, generation prompt included
  };

  // The new turn (the last message): only what follows the cached text, or after dropping the
  // oldest turns, the whole rendered conversation. Nothing when even the system message and
  // the new message alone do not fit (the message is then withdrawn).
  std::optional<Turn> prepare_turn() {
    const gguf::File& file = loaded_.model->file();
    const int max_tokens = loaded_.context->max_tokens();
    RenderedChat rendered = render_chat_template(file, messages_, true);
    if (rendered.text.compare(0, cached_text_.size(), cached_text_) == 0) {
      RenderedChat fresh = rendered.suffix(cached_text_.size());
      const int n_past = loaded_.context->n_past();
      if (n_past + int(encode(fresh, n_past == 0).size()) + reply_reserve() <= max_tokens) {
        return Turn{std::move(fresh), std::move(rendered.text)};
      }
    }
    // The conversation is fed again from the start, without its oldest turns if need be.
    const std::size_t first_turn = options_.system.empty() ? 0 : 1;
    int dropped = 0;
    int needed = 0;
    while ((needed = int(encode(rendered, true).size())) + reply_reserve() > max_tokens) {
      if (messages_.size() - first_turn <= 1) {
        fmt::print(stderr,
                   "[message too long: with the system message it needs {} tokens and the reply "
                   "{}, but the context holds {} (raise -c/--context); not sent]\n",
                   needed, reply_reserve(), max_tokens);
        messages_.pop_back();
        return std::nullopt;
      }
      // Drop the oldest user message and the replies up to the next user message.
      std::size_t end = first_turn + 1;
      while (end < messages_.size() - 1 && messages_[end].role != "user") ++end;
      messages_.erase(messages_.begin() + std::ptrdiff_t(first_turn),
                      messages_.begin() + std::ptrdiff_t(end));
      ++dropped;
      rendered = render_chat_template(file, messages_, true);
    }
    if (dropped > 0) {
      fmt::print(stderr, "[context full: dropped the oldest {} turn{}{}]\n", dropped,
                 dropped == 1 ? "" : "s",
                 options_.system.empty() ? "" : "; the system message is kept");
    }
    restart_cache();
    std::string conversation = rendered.text;
    return Turn{std::move(rendered), std::move(conversation)};
  }

  void turn(const std::string& line) {
    messages_.push_back({"user", line});
    const std::optional<Turn> next = prepare_turn();
    if (!next) return;
    InferenceContext& context = *loaded_.context;
    const Tokenizer& tokenizer = *loaded_.tokenizer;
    // BOS (where the model wants one) only at the very start of the conversation.
    const std::vector<int32_t> prompt = encode(next->feed, context.n_past() == 0);
    if (options_.verbose_prompt) print_prompt_tokens(tokenizer, prompt);
    const int cached_before = context.n_past();

    StopFilter filter(options_.stop);
    std::string reply;
    std::vector<int32_t> accepted;  // reply tokens streamed (all but possibly the last are fed)
    bool interrupted = false;
    const GenerationStats stats =
        generate(context, tokenizer, prompt, options_.n_predict, sampler_, [&](int32_t token) {
          if (take_pending_interrupt()) {
            interrupted = true;
            return false;
          }
          accepted.push_back(token);
          const std::string text = filter.add(tokenizer.token_to_piece(token));
          reply += text;
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
          return !filter.stopped();
        });
    const std::string tail = filter.finish();
    reply += tail;
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    // A Ctrl-C pressed as the reply ended was meant for the reply, not to end the chat.
    interrupted |= take_pending_interrupt();

    // generate() does not feed the last token it sampled; feed it so the cache holds the whole
    // reply and the next turn only adds the template's text after it.
    const int fed = context.n_past() - cached_before - int(prompt.size());
    if (int(accepted.size()) > fed && context.n_past() < context.max_tokens()) {
      context.eval(std::span<const int32_t>(&accepted.back(), 1));
    }
    messages_.push_back({"assistant", reply});
    cached_text_ = next->conversation + reply;
    // A stop string was cut from the reply but is in the cache: the texts no longer agree, so
    // the next turn feeds the conversation again.
    if (filter.stopped()) restart_cache();

    if (interrupted) fmt::print(stderr, "[stopped]\n");
    if (stats.context_full) {
      fmt::print(stderr, "[reply cut: the context is full; the next turn drops the oldest]\n");
    }
    fmt::print(stderr, "[{:.1f} tokens/s | context {}/{} tokens | KV cache {}]\n",
               stats.decode_tokens_per_second(), context.n_past(), context.max_tokens(),
               human_bytes(context.cache().bytes()));
  }

  const GenerationOptions& options_;
  LoadedModel loaded_;
  Sampler sampler_;
  std::vector<ChatMessage> messages_;
  std::string cached_text_;  // the rendered conversation the cache has seen
};

}  // namespace

void run_chat(const GenerationOptions& options) {
  if (!options.stats_json.empty()) fail_usage("--stats-json applies to squat run, not the chat");
  if (options.n_predict < 1) {
    fail_usage("-n {} leaves no room for a reply: give the most tokens per reply (at least 1)",
               options.n_predict);
  }
  if (options.n_predict > options.model.context) {
    fail_usage("-n {} is more than the context holds (-c {}): raise -c/--context or lower -n",
               options.n_predict, options.model.context);
  }
  InterruptGuard guard;
  Chat chat(options);
  chat.loop();
}

}  // namespace squat::apps
