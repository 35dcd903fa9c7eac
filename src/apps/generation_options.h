// Flags shared by `squat run` and `squat chat`: how many tokens, sampling, stop strings, the
// system prompt and llama.cpp's spellings of them; and the small formatting helpers both use.
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <string>
#include <vector>

#include "apps/model_options.h"
#include "model/sampler.h"
#include "tokenizer/tokenizer.h"

namespace squat::apps {

struct GenerationOptions {
  ModelOptions model;
  int n_predict = 128;
  SamplerParams sampling;
  bool seed_given = false;  // else finish() draws a random seed (printed so a run can repeat)
  std::vector<std::string> stop;
  bool ignore_eos = false;
  std::string system;  // chat: the system message
  std::string stats_json;
  bool verbose_prompt = false;  // print the prompt's tokens before generating
  const CLI::App* command = nullptr;
};

// -n, sampling (--temp, --top-k, --top-p, --min-p, --seed, penalties), -r/--stop,
// --ignore-eos, --system (-sys), --stats-json, the model's flags and llama.cpp's flags.
void add_generation_options(CLI::App& cmd, GenerationOptions& options, const char* n_help);

// Call first in the command's callback: draws the seed when none was given, maps llama.cpp's
// flags, refuses bad values (stop strings, -n < 0).
void finish_generation_options(GenerationOptions& options);

// A sampler for the options; with --ignore-eos it never samples an end-of-generation token.
Sampler make_sampler(const GenerationOptions& options, const Tokenizer& tokenizer);

// --verbose-prompt: on stderr, the number of tokens, then one line per token: its id and its
// text as a JSON string (control tokens by name), so what the model is fed can be checked.
void print_prompt_tokens(const Tokenizer& tokenizer, const std::vector<int32_t>& tokens);

// "512 B", "3.4 KiB", "12.0 MiB", "1.50 GiB".
std::string human_bytes(std::size_t bytes);

// The interactive chat of `squat chat` and `squat run -cnv` (chat_command.cpp).
void run_chat(const GenerationOptions& options);

}  // namespace squat::apps
