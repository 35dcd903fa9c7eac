// `squat run` (one prompt, streamed continuation) and `squat chat` (interactive loop whose
// history stays in the KV cache).
#include <fmt/format.h>
#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "core/error.h"
#include "core/files.h"
#include "model/generate.h"
#include "server/stop_filter.h"

namespace squat::apps {

namespace {

struct RunOptions {
  ModelOptions model;
  std::string prompt;
  std::string prompt_file;
  int n_predict = 128;
  SamplerParams sampling;
  bool chat = false;
  bool display_prompt = true;
  std::vector<std::string> stop;
  std::string stats_json;
};

// Streams generated text to stdout and ends generation at a stop string; the server's
// StopFilter holds back text that could be the start of one, so a stop string is never printed.
class StopStreamer {
 public:
  explicit StopStreamer(const std::vector<std::string>& stops) : filter_(stops) {}

  // Returns false when a stop string was reached.
  bool add(const std::string& piece) {
    emit(filter_.add(piece));
    return !filter_.stopped();
  }
  void finish() { emit(filter_.finish()); }

 private:
  static void emit(const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  }
  server::StopFilter filter_;
};

void add_sampling_options(CLI::App& cmd, SamplerParams& sampling) {
  cmd.add_option("--temp", sampling.temperature, "Sampling temperature (0 = greedy)");
  cmd.add_option("--top-k", sampling.top_k, "Keep the k most likely tokens (0 = all)");
  cmd.add_option("--top-p", sampling.top_p, "Keep the smallest set reaching this probability");
  cmd.add_option("--seed", sampling.seed, "Random seed");
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open prompt file '{}'", path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes one token's bytes as soon as it is sampled.
void stream_token(const Tokenizer& tokenizer, int32_t token) {
  const std::string piece = tokenizer.token_to_piece(token);
  std::fwrite(piece.data(), 1, piece.size(), stdout);
  std::fflush(stdout);
}

// Peak resident set size of this process so far, in bytes.
std::size_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::size_t(usage.ru_maxrss) * 1024;
}

// What a run measured, printed on stderr and optionally written as JSON.
void report(const GenerationStats& stats, const InferenceContext& context,
            const ModelOptions& options, const std::string& json_path) {
  const AttentionCache& cache = context.cache();
  const ModelConfig& c = context.model().config();
  const std::size_t f16_bytes = std::size_t(cache.n_tokens()) * std::size_t(c.n_layers) *
                                std::size_t(c.kv_dim()) * 2 * sizeof(uint16_t);
  const std::size_t rss = peak_rss_bytes();
  fmt::print(stderr,
             "\n\nprompt: {} tokens, {:.1f} tokens/s | decode: {} tokens, {:.1f} tokens/s\n"
             "KV cache ({}): {} tokens, {} bytes = {:.3f} of fp16 ({} bytes), {:.2f} bits per "
             "element | peak RSS {:.1f} MiB\n",
             stats.prompt_tokens, stats.prompt_tokens_per_second(), stats.generated_tokens,
             stats.decode_tokens_per_second(), options.kv, cache.n_tokens(), cache.bytes(),
             f16_bytes ? double(cache.bytes()) / double(f16_bytes) : 0.0, f16_bytes,
             cache.bits_per_element(), double(rss) / (1 << 20));
  if (json_path.empty()) return;
  const nlohmann::json out = {
      {"kv", options.kv},
      {"prompt_tokens", stats.prompt_tokens},
      {"generated_tokens", stats.generated_tokens},
      {"prompt_tokens_per_s", stats.prompt_tokens_per_second()},
      {"decode_tokens_per_s", stats.decode_tokens_per_second()},
      {"cache_tokens", cache.n_tokens()},
      {"cache_bytes", cache.bytes()},
      {"fp16_cache_bytes", f16_bytes},
      {"bits_per_element", cache.bits_per_element()},
      {"peak_rss_bytes", rss},
  };
  write_file_atomically(json_path, out.dump(2) + "\n");
}

void run(const RunOptions& options) {
  if (options.prompt.empty() == options.prompt_file.empty()) {
    fail_usage("give the prompt with exactly one of -p/--prompt or -f/--file");
  }
  if (options.n_predict < 0) fail_usage("-n/--n-predict must be >= 0, got {}", options.n_predict);
  for (const std::string& stop : options.stop) {
    if (stop.empty()) fail_usage("--stop needs a non-empty text");
  }
  Sampler sampler(options.sampling);
  LoadedModel loaded = load_model(options.model);
  std::string text = options.prompt.empty() ? read_text_file(options.prompt_file) : options.prompt;
  const bool chat = options.chat;
  if (chat) text = apply_chat_template(loaded.model->file(), {{"user", text}}, true);
  const std::vector<int32_t> prompt = loaded.tokenizer->encode(text, true, chat);
  if (int(prompt.size()) > loaded.context->max_tokens()) {
    fail("the prompt has {} tokens but the context holds {} (raise -c/--context)", prompt.size(),
         loaded.context->max_tokens());
  }
  if (!chat && options.display_prompt) std::fwrite(text.data(), 1, text.size(), stdout);
  StopStreamer streamer(options.stop);
  const GenerationStats stats = generate(
      *loaded.context, *loaded.tokenizer, prompt, options.n_predict, sampler,
      [&](int32_t token) { return streamer.add(loaded.tokenizer->token_to_piece(token)); });
  streamer.finish();
  save_subspace_if_asked(options.model, *loaded.context);
  report(stats, *loaded.context, options.model, options.stats_json);
}

void chat(const RunOptions& options) {
  Sampler sampler(options.sampling);
  LoadedModel loaded = load_model(options.model);
  std::vector<ChatMessage> messages;
  std::string cached_text;  // the rendered conversation the cache has seen
  fmt::print(stderr, "squat chat: type a message and press Enter; an empty line or Ctrl-D ends.\n");
  std::string line;
  for (;;) {
    fmt::print(stderr, "> ");
    if (!std::getline(std::cin, line) || line.empty()) break;
    messages.push_back({"user", line});
    std::string rendered = apply_chat_template(loaded.model->file(), messages, true);
    std::string fresh;
    if (rendered.compare(0, cached_text.size(), cached_text) == 0) {
      fresh = rendered.substr(cached_text.size());
    } else {  // the template rewrote earlier turns: start the cache over
      loaded.context->reset();
      fresh = rendered;
    }
    if (loaded.context->n_past() + int(loaded.tokenizer->encode(fresh, false, true).size()) +
            options.n_predict >
        loaded.context->max_tokens()) {
      fmt::print(stderr, "[context full: conversation restarted]\n");
      messages.assign(1, {"user", line});
      loaded.context->reset();
      cached_text.clear();
      rendered = fresh = apply_chat_template(loaded.model->file(), messages, true);
    }
    std::string reply;
    int32_t last_token = -1;
    // BOS (where the model wants one) only at the very start of the conversation.
    const std::vector<int32_t> turn =
        loaded.tokenizer->encode(fresh, loaded.context->n_past() == 0, true);
    const int cached_before = loaded.context->n_past();
    const GenerationStats stats = generate(*loaded.context, *loaded.tokenizer, turn,
                                           options.n_predict, sampler, [&](int32_t token) {
                                             reply += loaded.tokenizer->token_to_piece(token);
                                             last_token = token;
                                             stream_token(*loaded.tokenizer, token);
                                             return true;
                                           });
    // generate() does not feed the last token it sampled; feed it so the cache holds the whole
    // reply and the next turn only adds the template's text after it.
    const int fed = loaded.context->n_past() - cached_before - int(turn.size());
    if (stats.generated_tokens > fed && loaded.context->n_past() < loaded.context->max_tokens()) {
      loaded.context->eval(std::span<const int32_t>(&last_token, 1));
    }
    messages.push_back({"assistant", reply});
    cached_text = rendered + reply;
    fmt::print(stderr, "\n[{:.1f} tokens/s, cache {} bytes]\n", stats.decode_tokens_per_second(),
               loaded.context->cache().bytes());
  }
}

}  // namespace

void register_run_command(CLI::App& app) {
  auto options = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Generate a continuation of a prompt");
  add_model_options(*cmd, options->model);
  cmd->add_option("-p,--prompt", options->prompt, "Prompt text");
  cmd->add_option("-f,--file", options->prompt_file, "Read the prompt from a file");
  cmd->add_option("-n,--n-predict", options->n_predict, "Tokens to generate");
  cmd->add_flag("--chat", options->chat, "Wrap the prompt in the model's chat template");
  cmd->add_flag("!--no-display-prompt", options->display_prompt,
                "Print only the generated text, not the prompt");
  cmd->add_option("--stop", options->stop,
                  "End generation where the output reaches this text (repeatable)");
  cmd->add_option("--stats-json", options->stats_json,
                  "Write what the run measured (speed, cache bytes, bits per element, peak RSS)");
  add_sampling_options(*cmd, options->sampling);
  cmd->callback([options] { run(*options); });

  auto chat_options = std::make_shared<RunOptions>();
  chat_options->n_predict = 512;
  auto* chat_cmd = app.add_subcommand("chat", "Interactive chat; history stays in the KV cache");
  add_model_options(*chat_cmd, chat_options->model);
  chat_cmd->add_option("-n,--n-predict", chat_options->n_predict, "Most tokens per reply");
  add_sampling_options(*chat_cmd, chat_options->sampling);
  chat_cmd->callback([chat_options] { chat(*chat_options); });
}

}  // namespace squat::apps
