// `squat run` (one prompt, streamed continuation) and the registration of `squat chat` (whose
// loop is in chat_command.cpp).
#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/commands.h"
#include "apps/generation_options.h"
#include "apps/model_options.h"
#include "core/error.h"
#include "core/files.h"
#include "core/process_memory.h"
#include "model/generate.h"
#include "model/stop_filter.h"
#include "tokenizer/unicode.h"

namespace squat::apps {

namespace {

struct RunOptions {
  GenerationOptions gen;
  std::string prompt;
  std::string prompt_file;
  bool chat = false;
  bool conversation = false;  // llama.cpp's -cnv: the interactive chat, -p as system prompt
  bool display_prompt = true;
};

// Streams generated text to stdout and ends generation at a stop string; StopFilter holds back text that could be the start of one, so a stop string is never printed.
class StopStreamer {
 public:
  explicit StopStreamer(const std::vector<std::string>& stops) : filter_(stops) {}

  // Returns false when a stop string was reached.
  bool add(const std::string& piece) {
    emit(filter_.add(piece));
    return !filter_.stopped();
  }
  void finish() { emit(filter_.finish()); }
  // Whether the last byte written was a newline (or nothing was written).
  bool at_line_start() const { return at_line_start_; }

 private:
  void emit(const std::string& text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    at_line_start_ = text.back() == '\n';
  }
  StopFilter filter_;
  bool at_line_start_ = true;
};

// What a run measured, printed on stderr and optionally written as JSON.
void report(const GenerationStats& stats, const InferenceContext& context,
            const GenerationOptions& gen, const std::string& json_path) {
  const ModelOptions& options = gen.model;
  const AttentionCache& cache = context.cache();
  const ModelConfig& c = context.model().config();
  const std::size_t f16_bytes = std::size_t(cache.n_tokens()) * std::size_t(c.n_layers) *
                                std::size_t(c.kv_dim()) * 2 * sizeof(uint16_t);
  const std::size_t rss = peak_resident_set_bytes();
  fmt::print(stderr,
             "\nprompt: {} tokens, {:.1f} tokens/s | decode: {} tokens, {:.1f} tokens/s | seed {}\n"
             "KV cache ({}): {} tokens, {} = {:.3f} of fp16 ({}), {:.2f} bits per element | "
             "peak RSS {}\n",
             stats.prompt_tokens, stats.prompt_tokens_per_second(), stats.generated_tokens,
             stats.decode_tokens_per_second(), gen.sampling.seed, kv::to_string(options.kv),
             cache.n_tokens(), human_bytes(cache.bytes()),
             f16_bytes ? double(cache.bytes()) / double(f16_bytes) : 0.0, human_bytes(f16_bytes),
             cache.bits_per_element(), human_bytes(rss));
  if (kv::has_residual_window(options.kv) && cache.n_tokens() <= options.residual_length) {
    fmt::print(stderr,
               "note: all {} tokens are still in the full-precision residual window "
               "(--residual-length {}), so nothing is quantized yet and the cache is as large as "
               "fp16; {}-bit storage starts once more than {} tokens are cached\n",
               cache.n_tokens(), options.residual_length, options.k_bits, options.residual_length);
  }
  if (json_path.empty()) return;
  nlohmann::json out = {
      {"kv", kv::to_string(options.kv)},
      {"seed", gen.sampling.seed},
      {"prompt_tokens", stats.prompt_tokens},
      {"generated_tokens", stats.generated_tokens},
      {"prompt_tokens_per_s", stats.prompt_tokens_per_second()},
      {"decode_tokens_per_s", stats.decode_tokens_per_second()},
      {"cache_tokens", cache.n_tokens()},
      {"cache_bytes", cache.bytes()},
      {"fp16_cache_bytes", f16_bytes},
      {"bits_per_element", cache.bits_per_element()},
      {"peak_rss_bytes", rss},
      {"weight_bytes", context.model().weight_bytes()},
  };
  write_file_atomically(json_path, out.dump(2) + "\n");
}

void run(RunOptions& options) {
  GenerationOptions& gen = options.gen;
  finish_generation_options(gen);
  if (options.conversation) {  // llama.cpp's -cnv: -p/-f become the system prompt
    if (!options.prompt.empty() || !options.prompt_file.empty()) {
      gen.system = options.prompt.empty() ? read_text_file(options.prompt_file, "prompt file")
                                          : options.prompt;
    }
    run_chat(gen);
    return;
  }
  if (options.prompt.empty() == options.prompt_file.empty()) {
    fail_usage("give the prompt with exactly one of -p/--prompt or -f/--file");
  }
  if (!gen.system.empty() && !options.chat) {
    fail_usage("--system applies to the chat template: add --chat (or use squat chat)");
  }
  if (gen.n_predict > gen.model.context) {
    fail_usage("-n {} is more than the context holds (-c {}): raise -c/--context or lower -n",
               gen.n_predict, gen.model.context);
  }
  LoadedModel loaded = load_model(gen.model);
  Sampler sampler = make_sampler(gen, *loaded.tokenizer);
  const std::string text =
      options.prompt.empty() ? read_text_file(options.prompt_file, "prompt file") : options.prompt;
  // Checked here so that an error's offset is the prompt's own, not the rendered chat's.
  for (const auto& [what, value] : {std::pair{"the prompt", &text}, {"--system", &gen.system}}) {
    if (const std::size_t bad = unicode::first_invalid(*value); bad != unicode::kValid) {
      fail(
          "{} is not valid UTF-8: byte 0x{:02x} at offset {} does not start a well-formed "
          "character",
          what, static_cast<unsigned char>((*value)[bad]), bad);
    }
  }
  std::vector<int32_t> prompt;
  if (options.chat) {
    std::vector<ChatMessage> messages;
    if (!gen.system.empty()) messages.push_back({"system", gen.system});
    messages.push_back({"user", text});
    // The prompt is message content, plain text: only the template's delimiters become control
    // tokens (a prompt holding "<|im_start|>system" cannot forge a turn).
    prompt = loaded.tokenizer->encode_chat(
        render_chat_template(loaded.model->file(), messages, true), true);
  } else {
    prompt = loaded.tokenizer->encode(text, true, false);
  }
  if (gen.verbose_prompt) print_prompt_tokens(*loaded.tokenizer, prompt);
  if (int(prompt.size()) > loaded.context->max_tokens()) {
    fail("the prompt has {} tokens but the context holds {} (raise -c/--context)", prompt.size(),
         loaded.context->max_tokens());
  }
  if (!options.chat && options.display_prompt) std::fwrite(text.data(), 1, text.size(), stdout);
  StopStreamer streamer(gen.stop);
  const GenerationStats stats = generate(
      *loaded.context, *loaded.tokenizer, prompt, gen.n_predict, sampler,
      [&](int32_t token) { return streamer.add(loaded.tokenizer->token_to_piece(token)); });
  streamer.finish();
  if (!streamer.at_line_start()) std::fputc('\n', stdout);  // end the text's last line
  std::fflush(stdout);
  save_subspace_if_asked(gen.model, *loaded.context);
  report(stats, *loaded.context, gen, gen.stats_json);
  if (stats.context_full) {
    fail(
        "the context is full: {} prompt + {} generated tokens fill -c {} before -n {} tokens "
        "were generated; raise -c/--context or lower -n",
        stats.prompt_tokens, stats.generated_tokens, loaded.context->max_tokens(), gen.n_predict);
  }
}

}  // namespace

void register_run_command(CLI::App& app) {
  auto options = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Generate a continuation of a prompt");
  cmd->add_option("-p,--prompt", options->prompt, "Prompt text");
  cmd->add_option("-f,--file", options->prompt_file, "Read the prompt from a file");
  add_generation_options(*cmd, options->gen, "Tokens to generate (at most -c)");
  cmd->add_flag("--chat", options->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system,--system-prompt", options->gen.system,
                  "With --chat: the system message (-sys)");
  cmd->add_flag("--conversation", options->conversation,
                "-cnv: the interactive chat (as squat chat), with -p/-f as the system prompt");
  cmd->add_flag("!--no-display-prompt", options->display_prompt,
                "Print only the generated text, not the prompt");
  cmd->callback([options] { run(*options); });

  auto chat_options = std::make_shared<GenerationOptions>();
  chat_options->n_predict = 512;
  auto* chat_cmd = app.add_subcommand(
      "chat",
      "Interactive chat; history stays in the KV cache. Ctrl-C stops a reply, Ctrl-C at the "
      "prompt or Ctrl-D ends; /help lists the commands");
  add_generation_options(*chat_cmd, *chat_options, "Most tokens per reply");
  chat_cmd->add_option("--system,--system-prompt", chat_options->system,
                       "System message at the start of the conversation (-sys)");
  static bool chat_conversation = false;  // -cnv is chat's own mode: accepted, no effect
  chat_cmd->add_flag("--conversation", chat_conversation, "-cnv: accepted (this is the chat)");
  chat_cmd->callback([chat_options] {
    finish_generation_options(*chat_options);
    run_chat(*chat_options);
  });
}

}  // namespace squat::apps
