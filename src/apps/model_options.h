// Flags shared by every subcommand that runs a model (run, chat, ...), parsed by one function
// so they are spelled and checked the same way everywhere.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "core/thread_pool.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace squat::apps {

struct ModelOptions {
  std::string model_path;
  int threads = 0;     // 0: every core
  int context = 4096;  // tokens the cache holds
  int batch = 256;     // prompt tokens per forward batch
  std::string kv = "f16";
};

void add_model_options(CLI::App& cmd, ModelOptions& options);

// Everything a command needs to run a model: loaded once, used for one sequence.
struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<InferenceContext> context;
};

// Validates the options, loads the model and tokenizer and makes the context and its cache.
LoadedModel load_model(const ModelOptions& options);

// A fresh context of `max_tokens` tokens with the cache the options ask for.
std::unique_ptr<InferenceContext> make_context(const Model& model, const ModelOptions& options,
                                               ThreadPool& pool, int max_tokens);

}  // namespace squat::apps
