// `squat bench`: prompt-processing and decode speed of the engine and the size of its KV cache,
// per cache method and context length, as the median of repeated runs; a table on the terminal
// and optionally JSON for scripts. With --bandwidth also the machine's memory read bandwidth and,
// per row, how close decoding comes to the speed that bandwidth allows (the roofline).
#include <fmt/format.h>
#include <sys/resource.h>

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
#include "core/error.h"
#include "core/files.h"
#include "model/sampler.h"

namespace squat::apps {

namespace {

struct BenchOptions {
  ModelOptions model;
  std::vector<std::string> methods{"f16"};  // --kv list
  std::vector<int> contexts{512};
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
  std::vector<double> prompt_tps, decode_tps;
  std::size_t cache_tokens = 0, cache_bytes = 0, f16_bytes = 0;
  double bits_per_element = 0;
  std::size_t peak_rss = 0;
  // Bytes one decode step reads from memory (see decode_bytes_per_token below).
  std::size_t weight_bytes = 0, logits_bytes = 0;
  double cache_bytes_read = 0;
  double decode_bytes_per_token() const {
    return double(weight_bytes) + cache_bytes_read + double(logits_bytes);
  }
  double bytes_per_token() const { return cache_tokens ? double(cache_bytes) / cache_tokens : 0; }
  double ratio_to_f16() const { return f16_bytes ? double(cache_bytes) / double(f16_bytes) : 0; }
};

// One entry of the --kv list as run/chat options: kivi-N / squat-N set both bit widths.
ModelOptions method_options(const ModelOptions& base, const std::string& entry) {
  ModelOptions o = base;
  o.command = nullptr;  // the flags were checked against the whole list
  const auto dash = entry.find('-');
  o.kv = entry.substr(0, dash);
  if (dash != std::string::npos) o.k_bits = o.v_bits = std::stoi(entry.substr(dash + 1));
  return o;
}

// Peak resident set size since the last reset_peak_rss() (Linux: VmHWM, reset by writing 5
// to /proc/self/clear_refs); falls back to the process's peak when that is not available.
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }
std::size_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::size_t(std::stoull(line.substr(6))) * 1024;
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return std::size_t(usage.ru_maxrss) * 1024;
}

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
  if (options.methods.empty()) fail_usage("--kv needs at least one method");
  std::vector<std::string> bases;
  bool plain_bits = false;  // a plain kivi/squat entry, which takes --k-bits/--v-bits
  for (const std::string& m : options.methods) {
    bases.push_back(m.substr(0, m.find('-')));
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
  using Clock = std::chrono::steady_clock;

  Bandwidth bandwidth;
  if (options.bandwidth) {
    const std::size_t buffer = options.bandwidth_mib > 0
                                   ? std::size_t(options.bandwidth_mib) << 20
                                   : default_bandwidth_buffer_bytes();
    bandwidth = measure_read_bandwidth(*loaded.pool, buffer, options.bandwidth_passes);
  }

  std::vector<Row> rows;
  for (std::size_t mi = 0; mi < per_method.size(); ++mi) {
    for (int ctx : options.contexts) {
      Row row;
      row.method = options.methods[mi];
      row.context = ctx;
      const std::vector<int32_t> prompt = prompt_tokens(options, *loaded.tokenizer, vocab, ctx);
      reset_peak_rss();
      auto context = make_context(model, per_method[mi], *loaded.pool, ctx + options.gen);
      // One untimed run pages the weights in and sizes per-thread buffers. Its prompt is cut
      // to 512 tokens: a long one would double the time of a long-context row, and what it
      // leaves untouched (cache pages past 512 tokens) costs the timed prompt well under 1%.
      const std::span<const int32_t> warmup(prompt.data(), std::min<std::size_t>(prompt.size(), 512));
      for (int repeat = -1; repeat < options.repeats; ++repeat) {
        context->reset();
        auto start = Clock::now();
        const float* logits =
            context->eval(repeat < 0 ? warmup : std::span<const int32_t>(prompt));
        const double prompt_seconds = std::chrono::duration<double>(Clock::now() - start).count();
        const std::size_t cache_bytes_before_decode = context->cache().bytes();
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
        const AttentionCache& cache = context->cache();
        row.cache_tokens = std::size_t(cache.n_tokens());
        row.cache_bytes = cache.bytes();
        row.bits_per_element = cache.bits_per_element();
        // Bytes from memory per decode step: every weight matrix once (Model::weight_bytes),
        // the whole KV cache (attention reads every cached key and value; it grows from the
        // prompt's bytes to the final ones, so the mean of the two ends), and the logits row
        // written. Activations (a few KB per layer) and the RoPE cos/sin rows of pre-RoPE keys
        // (one table shared by all layers, which stays in cache) are left out.
        row.weight_bytes = model.weight_bytes();
        row.cache_bytes_read = 0.5 * double(cache_bytes_before_decode + row.cache_bytes);
        row.logits_bytes = std::size_t(vocab) * sizeof(float);
        // What an fp16 cache of the same tokens stores: keys and values, 2 bytes each.
        row.f16_bytes = row.cache_tokens * std::size_t(config.n_layers) *
                        std::size_t(config.kv_dim()) * 2 * sizeof(uint16_t);
      }
      row.peak_rss = peak_rss_bytes();
      rows.push_back(row);
    }
  }

  fmt::print("model: {} | threads: {} | decode tokens: {} | repeats: {}\n", config.name,
             loaded.pool->size(), options.gen, options.repeats);
  if (options.bandwidth) {
    fmt::print("memory read bandwidth: {:.2f} GB/s (best of {} passes over {} MiB, {} threads)\n",
               bandwidth.bytes_per_s / 1e9, bandwidth.pass_bytes_per_s.size(),
               bandwidth.buffer_bytes >> 20, bandwidth.threads);
  }
  std::string header = fmt::format("{:>8} {:>8} {:>12} {:>12} {:>12} {:>10} {:>6} {:>7} {:>9}",
                                   "kv", "context", "prompt tok/s", "decode tok/s", "cache bytes",
                                   "bytes/tok", "bits", "vs f16", "peak MiB");
  if (options.bandwidth) {
    header += fmt::format(" {:>10} {:>13} {:>9}", "MB/decode", "roofline tok/s", "of roof");
  }
  fmt::print("{}\n", header);
  for (const Row& row : rows) {
    std::string line = fmt::format(
        "{:>8} {:>8} {:>12.1f} {:>12.2f} {:>12} {:>10.0f} {:>6.2f} {:>7.3f} {:>9.1f}", row.method,
        row.context, median(row.prompt_tps), median(row.decode_tps), row.cache_bytes,
        row.bytes_per_token(), row.bits_per_element, row.ratio_to_f16(),
        double(row.peak_rss) / (1 << 20));
    if (options.bandwidth) {
      const double roofline = bandwidth.bytes_per_s / row.decode_bytes_per_token();
      line += fmt::format(" {:>10.1f} {:>13.1f} {:>8.1f}%", row.decode_bytes_per_token() / 1e6,
                          roofline, 100.0 * median(row.decode_tps) / roofline);
    }
    fmt::print("{}\n", line);
  }
  fmt::print(
      "(cache figures after the prompt and {} decoded tokens; vs f16 = cache bytes / the "
      "bytes an fp16 cache of the same tokens stores)\n",
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
