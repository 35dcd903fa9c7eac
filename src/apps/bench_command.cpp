// `squat bench`: prompt-processing and decode speed of the engine, per context length, as the
// median of repeated runs; a table on the terminal and optionally JSON for scripts.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "core/error.h"
#include "core/files.h"
#include "model/sampler.h"

namespace squat::apps {

namespace {

struct BenchOptions {
  ModelOptions model;
  std::vector<int> contexts{512};
  int gen = 128;
  int repeats = 3;
  std::string prompt_file;  // text tiled to each context length; random tokens when empty
  std::string json_path;
};

struct Row {
  int context = 0;
  std::vector<double> prompt_tps, decode_tps;
  std::size_t cache_bytes = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

std::vector<int32_t> prompt_tokens(const BenchOptions& options, const Tokenizer& tokenizer,
                                   int vocab_size, int n) {
  std::vector<int32_t> source;
  if (!options.prompt_file.empty()) {
    std::ifstream in(options.prompt_file, std::ios::binary);
    if (!in) fail("cannot open prompt file '{}'", options.prompt_file);
    std::string text(64 * 1024, '\0');
    in.read(text.data(), std::streamsize(text.size()));
    text.resize(std::size_t(in.gcount()));
    // Cut at the last newline so the text does not end inside a UTF-8 sequence.
    if (const auto cut = text.rfind('\n'); cut != std::string::npos) text.resize(cut + 1);
    source = tokenizer.encode(text, true, false);
  }
  if (source.empty()) {
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> pick(0, vocab_size - 1);
    for (int i = 0; i < n; ++i) source.push_back(pick(rng));
  }
  std::vector<int32_t> tokens;
  while (int(tokens.size()) < n) tokens.insert(tokens.end(), source.begin(), source.end());
  tokens.resize(std::size_t(n));
  return tokens;
}

void bench(const BenchOptions& options) {
  if (options.gen < 1) fail_usage("--gen must be >= 1, got {}", options.gen);
  if (options.repeats < 1) fail_usage("--repeats must be >= 1, got {}", options.repeats);
  LoadedModel loaded = load_model(options.model);
  const Model& model = *loaded.model;
  const int vocab = model.config().vocab_size;
  using Clock = std::chrono::steady_clock;

  std::vector<Row> rows;
  for (int ctx : options.contexts) {
    if (ctx < 1) fail_usage("--ctx values must be >= 1, got {}", ctx);
    Row row{ctx, {}, {}, 0};
    const std::vector<int32_t> prompt = prompt_tokens(options, *loaded.tokenizer, vocab, ctx);
    auto context = make_context(model, options.model, *loaded.pool, ctx + options.gen);
    // One untimed run pages the weights in and sizes per-thread buffers.
    for (int repeat = -1; repeat < options.repeats; ++repeat) {
      context->reset();
      auto start = Clock::now();
      const float* logits = context->eval(prompt);
      const double prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();
      start = Clock::now();
      const int steps = repeat < 0 ? std::min(options.gen, 4) : options.gen;
      for (int i = 0; i < steps; ++i) {
        const int32_t token = Sampler::argmax(logits, vocab);
        logits = context->eval(std::span<const int32_t>(&token, 1));
      }
      const double decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (repeat < 0) continue;
      row.prompt_tps.push_back(ctx / prompt_seconds);
      row.decode_tps.push_back(steps / decode_seconds);
      row.cache_bytes = context->cache().bytes();
    }
    rows.push_back(row);
  }

  fmt::print("model: {} | threads: {} | kv: {} | decode tokens: {} | repeats: {}\n",
             model.config().name, loaded.pool->size(), options.model.kv, options.gen,
             options.repeats);
  fmt::print("{:>8} {:>14} {:>14} {:>14}\n", "context", "prompt tok/s", "decode tok/s",
             "cache bytes");
  for (const Row& row : rows) {
    fmt::print("{:>8} {:>14.1f} {:>14.2f} {:>14}\n", row.context, median(row.prompt_tps),
               median(row.decode_tps), row.cache_bytes);
  }
  if (!options.json_path.empty()) {
    nlohmann::json out;
    out["engine"] = "squat";
    out["model"] = model.config().name;
    out["threads"] = loaded.pool->size();
    out["kv"] = options.model.kv;
    out["decode_tokens"] = options.gen;
    for (const Row& row : rows) {
      out["rows"].push_back({{"context", row.context},
                             {"prompt_tokens_per_s", median(row.prompt_tps)},
                             {"decode_tokens_per_s", median(row.decode_tps)},
                             {"runs_prompt_tokens_per_s", row.prompt_tps},
                             {"runs_decode_tokens_per_s", row.decode_tps},
                             {"cache_bytes", row.cache_bytes}});
    }
    write_file_atomically(options.json_path, out.dump(2) + "\n");
  }
}

}  // namespace

void register_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench", "Measure prompt-processing and decode speed");
  add_model_options(*cmd, options->model);
  cmd->add_option("--ctx", options->contexts, "Prompt lengths in tokens, e.g. 512,4096")
      ->delimiter(',');
  cmd->add_option("--gen", options->gen, "Tokens decoded after each prompt");
  cmd->add_option("--repeats", options->repeats, "Timed runs per row (the median is reported)");
  cmd->add_option("--prompt-file", options->prompt_file,
                  "Text whose tokens make the prompt (default: random tokens)");
  cmd->add_option("--json", options->json_path, "Also write the results as JSON");
  cmd->callback([options] { bench(*options); });
}

}  // namespace squat::apps
