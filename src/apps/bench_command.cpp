// `squat bench`: prompt-processing and decode speed of the engine and the size of its KV cache,
// per cache method and context length, as the median of repeated runs; a table on the terminal
// and optionally JSON for scripts. With --bandwidth also the machine's memory read bandwidth and,
// per row, how close decoding comes to the speed that bandwidth allows (the roofline).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "apps/bandwidth.h"
#include "apps/commands.h"
#include "apps/model_options.h"
#include "apps/stats.h"
#include "core/error.h"
#include "core/files.h"
#include "core/process_memory.h"
#include "model/batch_decode.h"
#include "model/sampler.h"

namespace squat::apps {

namespace {

struct BenchOptions {
  ModelOptions model;
  std::vector<std::string> methods{"f16"};  // --kv list
  std::vector<int> contexts{512};
  std::vector<int> batches{1};  // sequences decoded together (batched forward pass)
  int gen = 128;
  int repeats = 3;
  std::string prompt_file;  // text tiled to each context length; random tokens when empty
  std::string json_path;
  bool bandwidth = false;
  int bandwidth_mib = 0;  // 0: default_bandwidth_buffer_bytes()
  int bandwidth_passes = 5;
};

struct Row {
  std::string method;
  int context = 0;
  int batch = 1;
  std::vector<double> prompt_tps, decode_tps;
  std::size_t cache_tokens = 0, cache_bytes = 0, f16_bytes = 0;
  double bits_per_element = 0;
  std::size_t peak_rss = 0;
  // Bytes one decode step reads from memory (see decode_bytes_per_token below); with a batch,
  // the weights are read once per step for all sequences, the caches and logits once each.
  std::size_t weight_bytes = 0, logits_bytes = 0;
  double cache_bytes_read = 0;  // all sequences
  double decode_bytes_per_token() const {
    return (double(weight_bytes) + cache_bytes_read + double(logits_bytes)) / batch;
  }
  // cache_tokens is per sequence, cache_bytes and f16_bytes are of all sequences together.
  double bytes_per_token() const {
    return cache_tokens ? double(cache_bytes) / double(cache_tokens * std::size_t(batch)) : 0;
  }
  double ratio_to_f16() const { return f16_bytes ? double(cache_bytes) / double(f16_bytes) : 0; }
};

// One entry of the --kv list as run/chat options: kivi-N / squat-N set both bit widths.
ModelOptions method_options(const ModelOptions& base, const std::string& entry) {
  ModelOptions o = base;
  o.command = nullptr;  // the flags were checked against the whole list
  const auto dash = entry.find('-');
  o.kv = kv::parse_method(entry.substr(0, dash));
  if (dash != std::string::npos) o.k_bits = o.v_bits = std::stoi(entry.substr(dash + 1));
  return o;
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

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The prompt at once, then `gen` greedy tokens one at a time, through one InferenceContext:
// fills the row's speeds (one per timed repeat) and cache figures.
void measure_one(const Model& model, const ModelOptions& options, ThreadPool& pool,
                 const std::vector<int32_t>& prompt, int gen, int repeats, Row& row) {
  const int vocab = model.config().vocab_size;
  auto context = make_context(model, options, pool, int(prompt.size()) + gen);
  const std::span<const int32_t> warmup(prompt.data(), std::min<std::size_t>(prompt.size(), 512));
  for (int repeat = -1; repeat < repeats; ++repeat) {
    context->reset();
    auto start = Clock::now();
    const float* logits = context->eval(repeat < 0 ? warmup : std::span<const int32_t>(prompt));
    const double prompt_seconds = seconds_since(start);
    const std::size_t bytes_before_decode = context->cache().bytes();
    const int steps = repeat < 0 ? std::min(gen, 4) : gen;
    start = Clock::now();
    for (int i = 0; i < steps; ++i) {
      const int32_t token = Sampler::argmax(logits, vocab);
      logits = context->eval(std::span<const int32_t>(&token, 1));
    }
    const double decode_seconds = seconds_since(start);
    if (repeat < 0) continue;
    row.prompt_tps.push_back(double(prompt.size()) / prompt_seconds);
    row.decode_tps.push_back(steps / decode_seconds);
    const AttentionCache& cache = context->cache();
    row.cache_tokens = std::size_t(cache.n_tokens());
    row.cache_bytes = cache.bytes();
    row.bits_per_element = cache.bits_per_element();
    row.cache_bytes_read = 0.5 * double(bytes_before_decode + row.cache_bytes);
  }
}

// `batch` sequences, each with its own cache: every prompt (a rotation of `prompt`, so the
// sequences differ) prefilled alone, then `gen` greedy steps in which all sequences advance
// together in one forward pass (BatchDecoder: weights read once per step). Speeds count the
// tokens of all sequences.
void measure_batch(const Model& model, const ModelOptions& options, ThreadPool& pool,
                   const std::vector<int32_t>& prompt, int batch, int gen, int repeats, Row& row) {
  const int vocab = model.config().vocab_size;
  const std::size_t n = prompt.size();
  std::vector<std::vector<int32_t>> prompts(static_cast<std::size_t>(batch));
  for (std::size_t s = 0; s < prompts.size(); ++s) {
    prompts[s] = prompt;
    std::rotate(prompts[s].begin(), prompts[s].begin() + std::ptrdiff_t(s * n / prompts.size()),
                prompts[s].end());
  }
  BatchDecoder decoder(model, pool, std::max(int(n), batch));
  std::vector<int32_t> next(static_cast<std::size_t>(batch));
  std::vector<BatchInput> inputs(static_cast<std::size_t>(batch));
  for (int repeat = -1; repeat < repeats; ++repeat) {
    std::vector<BatchSequence> sequences;
    for (int s = 0; s < batch; ++s) {
      sequences.emplace_back(make_cache(model, options, int(n) + gen));
    }
    auto start = Clock::now();
    std::size_t prompt_total = 0;
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const std::size_t length = repeat < 0 ? std::min<std::size_t>(n, 512) : n;
      const BatchInput input{&sequences[s], std::span<const int32_t>(prompts[s].data(), length)};
      next[s] = Sampler::argmax(decoder.eval(std::span<const BatchInput>(&input, 1)), vocab);
      prompt_total += length;
    }
    const double prompt_seconds = seconds_since(start);
    std::size_t bytes_before_decode = 0;
    for (const BatchSequence& s : sequences) bytes_before_decode += s.cache().bytes();
    const int steps = repeat < 0 ? std::min(gen, 4) : gen;
    start = Clock::now();
    for (int step = 0; step < steps; ++step) {
      for (std::size_t s = 0; s < sequences.size(); ++s) {
        inputs[s] = BatchInput{&sequences[s], std::span<const int32_t>(&next[s], 1)};
      }
      const float* logits = decoder.eval(inputs);
      for (std::size_t s = 0; s < sequences.size(); ++s) {
        next[s] = Sampler::argmax(logits + s * std::size_t(vocab), vocab);
      }
    }
    const double decode_seconds = seconds_since(start);
    if (repeat < 0) continue;
    row.prompt_tps.push_back(double(prompt_total) / prompt_seconds);
    row.decode_tps.push_back(double(steps) * batch / decode_seconds);
    row.cache_tokens = std::size_t(sequences[0].cache().n_tokens());
    row.cache_bytes = 0;
    for (const BatchSequence& s : sequences) row.cache_bytes += s.cache().bytes();
    row.bits_per_element = sequences[0].cache().bits_per_element();
    row.cache_bytes_read = 0.5 * double(bytes_before_decode + row.cache_bytes);
  }
}

void bench(const BenchOptions& options) {
  if (options.gen < 1) fail_usage("--gen must be >= 1, got {}", options.gen);
  if (options.repeats < 1) fail_usage("--repeats must be >= 1, got {}", options.repeats);
  if (options.methods.empty()) fail_usage("--kv needs at least one method");
  std::vector<kv::CacheMethod> bases;
  bool plain_bits = false;  // a plain kivi/squat entry, which takes --k-bits/--v-bits
  for (const std::string& m : options.methods) {
    bases.push_back(kv::parse_method(m.substr(0, m.find('-'))));
    plain_bits |= m == "kivi" || m == "squat";
  }
  options.model.check_flags(bases);
  for (const char* flag : {"--k-bits", "--v-bits"}) {
    if (options.model.command && options.model.command->count(flag) > 0 && !plain_bits) {
      fail_usage("{} applies to plain kivi/squat entries of --kv (kivi-N/squat-N set the bits)",
                 flag);
    }
  }
  if (!options.model.load_subspace.empty() || !options.model.save_subspace.empty()) {
    fail_usage("bench builds the subspace from each prompt; --save/--load-subspace do not apply");
  }
  for (const int ctx : options.contexts) {
    if (ctx < 1) fail_usage("--ctx values must be >= 1, got {}", ctx);
  }
  for (const int batch : options.batches) {
    if (batch < 1 || batch > 256) fail_usage("--batch values must be 1..256, got {}", batch);
  }
  std::vector<ModelOptions> per_method;
  for (const std::string& m : options.methods)
    per_method.push_back(method_options(options.model, m));
  ModelOptions first = per_method.front();
  first.context = 1;  // load_model's own context is not used
  LoadedModel loaded = load_model(first);
  const Model& model = *loaded.model;
  for (const ModelOptions& o : per_method) o.cache_config(model.config().head_dim);  // refuse early
  const ModelConfig& config = model.config();
  const int vocab = config.vocab_size;

  Bandwidth bandwidth;
  if (options.bandwidth) {
    const std::size_t buffer = options.bandwidth_mib > 0 ? std::size_t(options.bandwidth_mib) << 20
                                                         : default_bandwidth_buffer_bytes();
    bandwidth = measure_read_bandwidth(*loaded.pool, buffer, options.bandwidth_passes);
  }

  std::vector<Row> rows;
  for (std::size_t mi = 0; mi < per_method.size(); ++mi) {
    for (int ctx : options.contexts) {
      for (int batch : options.batches) {
        Row row;
        row.method = options.methods[mi];
        row.context = ctx;
        row.batch = batch;
        const std::vector<int32_t> prompt = prompt_tokens(options, *loaded.tokenizer, vocab, ctx);
        reset_peak_resident_set();
        // A first untimed run (repeat -1) pages the weights in and sizes per-thread buffers.
        // Its prompt is cut to 512 tokens: a long one would double the time of a long-context
        // row, and what it leaves untouched (cache pages past 512 tokens) costs the timed
        // prompt well under 1%.
        if (batch == 1) {
          measure_one(model, per_method[mi], *loaded.pool, prompt, options.gen, options.repeats,
                      row);
        } else {
          measure_batch(model, per_method[mi], *loaded.pool, prompt, batch, options.gen,
                        options.repeats, row);
        }
        // Bytes from memory per decode step: every weight matrix once (Model::weight_bytes),
        // the whole KV cache of every sequence (attention reads every cached key and value; it
        // grows from the prompt's bytes to the final ones, so the mean of the two ends), and
        // the logits rows written. Activations (a few KB per layer) and the RoPE cos/sin rows
        // of pre-RoPE keys (one table shared by all layers, which stays in cache) are left out.
        row.weight_bytes = model.weight_bytes();
        row.logits_bytes = std::size_t(batch) * std::size_t(vocab) * sizeof(float);
        // What an fp16 cache of the same tokens stores: keys and values, 2 bytes each.
        row.f16_bytes = std::size_t(batch) * row.cache_tokens * std::size_t(config.n_layers) *
                        std::size_t(config.kv_dim()) * 2 * sizeof(uint16_t);
        row.peak_rss = peak_resident_set_bytes();
        rows.push_back(row);
      }
    }
  }

  fmt::print("model: {} | threads: {} | decode tokens: {} | repeats: {}\n", config.name,
             loaded.pool->size(), options.gen, options.repeats);
  if (options.bandwidth) {
    fmt::print("memory read bandwidth: {:.2f} GB/s (best of {} passes over {} MiB, {} threads)\n",
               bandwidth.bytes_per_s / 1e9, bandwidth.pass_bytes_per_s.size(),
               bandwidth.buffer_bytes >> 20, bandwidth.threads);
  }
  std::string header = fmt::format(
      "{:>8} {:>8} {:>5} {:>12} {:>12} {:>12} {:>10} {:>6} {:>7} {:>9}", "kv", "context", "batch",
      "prompt tok/s", "decode tok/s", "cache bytes", "bytes/tok", "bits", "vs f16", "peak MiB");
  if (options.bandwidth) {
    header += fmt::format(" {:>10} {:>13} {:>9}", "MB/decode", "roofline tok/s", "of roof");
  }
  fmt::print("{}\n", header);
  for (const Row& row : rows) {
    std::string line = fmt::format(
        "{:>8} {:>8} {:>5} {:>12.1f} {:>12.2f} {:>12} {:>10.0f} {:>6.2f} {:>7.3f} {:>9.1f}",
        row.method, row.context, row.batch, median(row.prompt_tps), median(row.decode_tps),
        row.cache_bytes, row.bytes_per_token(), row.bits_per_element, row.ratio_to_f16(),
        double(row.peak_rss) / (1 << 20));
    if (options.bandwidth) {
      const double roofline = bandwidth.bytes_per_s / row.decode_bytes_per_token();
      line += fmt::format(" {:>10.1f} {:>13.1f} {:>8.1f}%", row.decode_bytes_per_token() / 1e6,
                          roofline, 100.0 * median(row.decode_tps) / roofline);
    }
    fmt::print("{}\n", line);
  }
  fmt::print(
      "(cache figures after the prompt and {} decoded tokens, of all the batch's sequences; "
      "tok/s count every sequence's tokens; vs f16 = cache bytes / the bytes an fp16 cache of "
      "the same tokens stores)\n",
      options.gen);
  if (options.bandwidth) {
    fmt::print(
        "(MB/decode = weights + mean KV cache bytes while decoding + logits, read per decoded "
        "token; roofline = bandwidth / that)\n");
  }
  if (!options.json_path.empty()) {
    nlohmann::json out;
    out["engine"] = "squat";
    out["model"] = config.name;
    out["threads"] = loaded.pool->size();
    out["kv"] = options.methods;
    out["decode_tokens"] = options.gen;
    out["repeats"] = options.repeats;
    out["weight_bytes"] = model.weight_bytes();
    if (options.bandwidth) {
      out["bandwidth"] = {{"bytes_per_s", bandwidth.bytes_per_s},
                          {"runs_bytes_per_s", bandwidth.pass_bytes_per_s},
                          {"buffer_bytes", bandwidth.buffer_bytes},
                          {"threads", bandwidth.threads}};
    }
    out["rows"] = nlohmann::json::array();
    for (const Row& row : rows) {
      out["rows"].push_back({{"kv", row.method},
                             {"context", row.context},
                             {"batch", row.batch},
                             {"prompt_tokens_per_s", median(row.prompt_tps)},
                             {"decode_tokens_per_s", median(row.decode_tps)},
                             {"runs_prompt_tokens_per_s", row.prompt_tps},
                             {"runs_decode_tokens_per_s", row.decode_tps},
                             {"cache_tokens", row.cache_tokens},
                             {"cache_bytes", row.cache_bytes},
                             {"bytes_per_token", row.bytes_per_token()},
                             {"bits_per_element", row.bits_per_element},
                             {"fp16_cache_bytes", row.f16_bytes},
                             {"ratio_to_f16", row.ratio_to_f16()},
                             {"peak_rss_bytes", row.peak_rss},
                             {"weight_bytes", row.weight_bytes},
                             {"decode_cache_bytes_read", row.cache_bytes_read},
                             {"logits_bytes", row.logits_bytes},
                             {"decode_bytes_per_token", row.decode_bytes_per_token()}});
      if (options.bandwidth) {
        const double roofline = bandwidth.bytes_per_s / row.decode_bytes_per_token();
        out["rows"].back()["roofline_decode_tokens_per_s"] = roofline;
        out["rows"].back()["roofline_fraction"] = median(row.decode_tps) / roofline;
      }
    }
    write_file_atomically(options.json_path, out.dump(2) + "\n");
  }
}

}  // namespace

void register_bench_command(CLI::App& app) {
  auto options = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand(
      "bench", "Measure prompt-processing and decode speed and KV-cache size per method");
  add_model_options(*cmd, options->model, &options->methods);
  cmd->add_option("--ctx", options->contexts, "Prompt lengths in tokens, e.g. 512,4096")
      ->delimiter(',');
  cmd->add_option("--batch", options->batches,
                  "Sequences decoded together in one batched forward pass, e.g. 1,4 (each with "
                  "its own cache and prompt; tok/s count all of them)")
      ->delimiter(',');
  cmd->add_option("--gen", options->gen, "Tokens decoded after each prompt");
  cmd->add_option("--repeats", options->repeats, "Timed runs per row (the median is reported)");
  cmd->add_option("--prompt-file", options->prompt_file,
                  "Text whose tokens make the prompt (default: random tokens)");
  cmd->add_option("--json", options->json_path, "Also write the results as JSON");
  auto* bandwidth =
      cmd->add_flag("--bandwidth", options->bandwidth,
                    "Also measure memory read bandwidth and each decode row's roofline fraction");
  cmd->add_option("--bandwidth-mib", options->bandwidth_mib,
                  "Buffer read by --bandwidth in MiB (default: 1 GiB or 4x the last-level cache)")
      ->check(CLI::Range(1, 1 << 20))
      ->needs(bandwidth);
  cmd->add_option("--bandwidth-passes", options->bandwidth_passes,
                  "Timed passes over that buffer (the best is reported)")
      ->check(CLI::Range(1, 1000))
      ->needs(bandwidth);
  cmd->callback([options] { bench(*options); });
}

}  // namespace squat::apps
