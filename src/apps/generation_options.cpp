#include "apps/generation_options.h"

#include <fmt/format.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"

namespace squat::apps {

void add_generation_options(CLI::App& cmd, GenerationOptions& options, const char* n_help) {
  add_model_options(cmd, options.model);
  add_llama_flags(cmd, options.model);
  cmd.add_option("-n,--n-predict", options.n_predict, n_help)->capture_default_str();
  SamplerParams& s = options.sampling;
  auto* sampling = cmd.add_option_group("Sampling", "How the next token is chosen");
  sampling->add_option("--temp", s.temperature, "Sampling temperature (0 = greedy)")
      ->capture_default_str();
  sampling->add_option("--top-k", s.top_k, "Keep the k most likely tokens (0 = all)")
      ->capture_default_str();
  sampling
      ->add_option("--top-p", s.top_p,
                   "Keep the smallest set of tokens reaching this probability (1 = off)")
      ->capture_default_str();
  sampling
      ->add_option("--min-p", s.min_p,
                   "Drop tokens less likely than this fraction of the most likely one (0 = off)")
      ->capture_default_str();
  sampling
      ->add_option("--repeat-penalty", s.repeat_penalty,
                   "Divide the logits of recently seen tokens by this (1 = off)")
      ->capture_default_str();
  sampling
      ->add_option("--repeat-last-n", s.penalty_last_n,
                   "How many recent tokens the penalties look at (0 = off)")
      ->capture_default_str();
  sampling
      ->add_option("--presence-penalty", s.presence_penalty,
                   "Subtract from the logit of every recently seen token (0 = off)")
      ->capture_default_str();
  sampling
      ->add_option("--frequency-penalty", s.frequency_penalty,
                   "Subtract this times the count of each recently seen token (0 = off)")
      ->capture_default_str();
  sampling->add_option("--seed", s.seed,
                       "Random seed (default, or -1 as in llama.cpp: a random one, printed so a "
                       "run can be repeated)");
  cmd.add_option("-r,--stop,--reverse-prompt", options.stop,
                 "End the reply where the output reaches this text (repeatable)");
  cmd.add_flag("--ignore-eos", options.ignore_eos,
               "Never end at the model's end-of-generation token (generate all -n tokens)");
  cmd.add_option("--stats-json", options.stats_json,
                 "Write what the run measured (speed, cache bytes, bits per element, peak RSS)");
  cmd.add_flag("--verbose-prompt", options.verbose_prompt,
               "Print the prompt's tokens (id and text) on stderr before generating");
  options.command = &cmd;
}

void finish_generation_options(GenerationOptions& options) {
  apply_llama_flags(options.model);
  if (options.n_predict < 0) fail_usage("-n/--n-predict must be >= 0, got {}", options.n_predict);
  for (const std::string& stop : options.stop) {
    if (stop.empty()) fail_usage("--stop/-r needs a non-empty text");
  }
  Sampler{options.sampling};  // refuse bad sampling values before the model loads
  // --seed -1 arrives as 2^64 - 1; llama.cpp users mean "random" by it.
  options.seed_given = options.command && options.command->count("--seed") > 0 &&
                       options.sampling.seed != std::numeric_limits<uint64_t>::max();
  if (!options.seed_given) {
    std::random_device device;
    options.sampling.seed = (uint64_t(device()) << 32) | device();
  }
}

Sampler make_sampler(const GenerationOptions& options, const Tokenizer& tokenizer) {
  Sampler sampler(options.sampling);
  if (options.ignore_eos) {
    for (std::size_t t = 0; t < tokenizer.vocab_size(); ++t) {
      if (tokenizer.is_eog(int32_t(t))) sampler.ban(int32_t(t));
    }
  }
  return sampler;
}

void print_prompt_tokens(const Tokenizer& tokenizer, const std::vector<int32_t>& tokens) {
  fmt::print(stderr, "prompt: {} tokens\n", tokens.size());
  for (const int32_t id : tokens) {
    // A byte-level piece may be part of a UTF-8 character: such bytes show as U+FFFD.
    const nlohmann::json piece = tokenizer.token_to_piece(id, true);
    fmt::print(stderr, "{:>8} {}\n", id,
               piece.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
}

std::string human_bytes(std::size_t bytes) {
  const double b = double(bytes);
  if (bytes < 1024) return fmt::format("{} B", bytes);
  if (b < 1024.0 * 1024) return fmt::format("{:.1f} KiB", b / 1024);
  if (b < 1024.0 * 1024 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
}

}  // namespace squat::apps
