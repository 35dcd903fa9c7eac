// `squat perplexity`: perplexity of a text, and KL divergence against a saved full-precision
// run, measured so that every scored token reads the KV cache (see docs/quality.md).
//
// Protocol, per window of `ctx` tokens: the first `prefix` tokens (default ctx/2) are fed in
// one eval (they attend to each other in full precision, as any prompt does); the rest are then
// fed in blocks of `block` tokens (default 1: token by token, as decoding), so their attention
// to the past goes through the cache store (quantized part + full-precision residual window).
// Scored are the tokens at positions prefix+1 .. ctx-1, each predicted by the logits of the
// previous position, which itself was fed after the prefix.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "apps/quality_progress.h"
#include "core/error.h"
#include "core/files.h"

namespace squat::apps {

namespace {

struct PerplexityOptions {
  ModelOptions model;
  std::string text_path;
  int chunks = 0;  // 0: every whole window of the text
  int prefix = 0;  // 0: ctx / 2
  int block = 1;   // tokens per eval after the prefix
  std::string save_logits, kl_base, json_path;
};

// Header of a --save-logits file; followed by one float32[vocab] row of log-probabilities
// per scored token, window after window.
struct LogitsHeader {
  char magic[8] = {'S', 'Q', 'L', 'O', 'G', 'P', '0', '1'};
  uint32_t vocab = 0, ctx = 0, prefix = 0, block = 0, windows = 0, scored_per_window = 0;
  uint64_t token_hash = 0;  // FNV-1a of every window's tokens: the same text and windows
};

uint64_t fnv1a(const std::vector<int32_t>& tokens, uint64_t hash) {
  for (int32_t t : tokens) {
    for (int i = 0; i < 4; ++i) {
      hash ^= (uint32_t(t) >> (8 * i)) & 0xffu;
      hash *= 1099511628211ull;
    }
  }
  return hash;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open text file '{}': {}", path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Log-softmax in double precision, stored as float.
void log_softmax(const float* logits, int n, float* out) {
  double mx = logits[0];
  for (int i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = float(double(logits[i]) - lse);
}

int argmax(const float* x, int n) { return int(std::max_element(x, x + n) - x); }

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  // Nearest rank.
  const std::size_t rank = std::size_t(std::ceil(p / 100.0 * double(values.size())));
  return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

void perplexity(const PerplexityOptions& options) {
  if (options.chunks < 0) fail_usage("--chunks must be >= 0, got {}", options.chunks);
  if (options.block < 1) fail_usage("--block must be >= 1, got {}", options.block);
  if (!options.save_logits.empty() && !options.kl_base.empty()) {
    fail_usage("give at most one of --save-logits and --kl-base");
  }
  const int ctx = options.model.context;
  const int prefix = options.prefix > 0 ? options.prefix : ctx / 2;
  if (ctx < 4) fail_usage("-c/--context must be >= 4 for perplexity, got {}", ctx);
  if (prefix < 1 || prefix > ctx - 2) {
    fail_usage("--prefix must be in [1, {}] for -c {}, got {}", ctx - 2, ctx, prefix);
  }
  const std::string text = read_text(options.text_path);
  LoadedModel loaded = load_model(options.model);
  const Tokenizer& tokenizer = *loaded.tokenizer;
  InferenceContext& context = *loaded.context;
  const int vocab = loaded.model->config().vocab_size;

  const std::vector<int32_t> all = tokenizer.encode(text, false, false);
  // Each window starts with BOS when the model wants one (as every prompt would).
  const bool bos = tokenizer.add_bos() && tokenizer.bos() >= 0;
  const int per_window = ctx - (bos ? 1 : 0);
  const int available = int(all.size()) / per_window;
  if (available < 1) {
    fail("'{}' has {} tokens, fewer than one window of {} (lower -c/--context)", options.text_path,
         all.size(), per_window);
  }
  const int windows = options.chunks > 0 ? std::min(options.chunks, available) : available;
  const int scored_per_window = ctx - prefix - 1;

  auto window_tokens = std::vector<std::vector<int32_t>>(std::size_t(windows));
  uint64_t hash = 1469598103934665603ull;
  for (int w = 0; w < windows; ++w) {
    auto& t = window_tokens[std::size_t(w)];
    if (bos) t.push_back(tokenizer.bos());
    t.insert(t.end(), all.begin() + std::ptrdiff_t(w) * per_window,
             all.begin() + std::ptrdiff_t(w + 1) * per_window);
    hash = fnv1a(t, hash);
  }
  LogitsHeader header;
  header.vocab = uint32_t(vocab);
  header.ctx = uint32_t(ctx);
  header.prefix = uint32_t(prefix);
  header.block = uint32_t(options.block);
  header.windows = uint32_t(windows);
  header.scored_per_window = uint32_t(scored_per_window);
  header.token_hash = hash;

  std::ofstream save;
  std::string save_tmp;
  if (!options.save_logits.empty()) {
    save_tmp = options.save_logits + ".tmp";
    save.open(save_tmp, std::ios::binary | std::ios::trunc);
    if (!save) fail("cannot write '{}': {}", save_tmp, std::strerror(errno));
    save.write(reinterpret_cast<const char*>(&header), sizeof header);
  }
  std::ifstream base;
  if (!options.kl_base.empty()) {
    base.open(options.kl_base, std::ios::binary);
    if (!base) fail("cannot open --kl-base '{}': {}", options.kl_base, std::strerror(errno));
    LogitsHeader got;
    base.read(reinterpret_cast<char*>(&got), sizeof got);
    if (!base || std::memcmp(got.magic, header.magic, sizeof got.magic) != 0) {
      fail("'{}' is not a logits file written by squat perplexity --save-logits", options.kl_base);
    }
    if (got.vocab != header.vocab || got.ctx != header.ctx || got.prefix != header.prefix ||
        got.windows != header.windows || got.token_hash != header.token_hash) {
      fail(
          "'{}' was saved for another text, model or window setting (vocab {}, -c {}, prefix {}, "
          "{} windows); this run has vocab {}, -c {}, prefix {}, {} windows",
          options.kl_base, got.vocab, got.ctx, got.prefix, got.windows, header.vocab, header.ctx,
          header.prefix, header.windows);
    }
    const auto expected = sizeof got + std::uintmax_t(got.windows) * got.scored_per_window *
                                           got.vocab * sizeof(float);
    if (std::filesystem::file_size(options.kl_base) != expected) {
      fail("'{}' is truncated: expected {} bytes", options.kl_base, expected);
    }
  }
  const bool compare = base.is_open();

  auto logp = std::vector<float>(std::size_t(vocab)), base_logp = logp;
  std::vector<float> block_logits;
  std::vector<double> nll, base_nll, kl;
  long agree = 0;
  double bits_per_element = 0;
  std::size_t cache_bytes = 0;
  ProgressBar bar("perplexity", windows, "tok");
  const auto start = std::chrono::steady_clock::now();
  long fed_tokens = 0;

  auto score = [&](const float* logits, int32_t target) {
    log_softmax(logits, vocab, logp.data());
    nll.push_back(-double(logp[std::size_t(target)]));
    if (save.is_open()) {
      save.write(reinterpret_cast<const char*>(logp.data()),
                 std::streamsize(vocab * sizeof(float)));
    }
    if (compare) {
      base.read(reinterpret_cast<char*>(base_logp.data()), std::streamsize(vocab * sizeof(float)));
      if (!base) fail("'{}' ended early", options.kl_base);
      double d = 0;
      for (int v = 0; v < vocab; ++v) {
        const double lb = base_logp[std::size_t(v)];
        d += std::exp(lb) * (lb - double(logp[std::size_t(v)]));
      }
      kl.push_back(d);
      base_nll.push_back(-double(base_logp[std::size_t(target)]));
      agree += argmax(base_logp.data(), vocab) == argmax(logp.data(), vocab);
    }
  };

  for (int w = 0; w < windows; ++w) {
    const std::vector<int32_t>& t = window_tokens[std::size_t(w)];
    context.reset();
    context.eval(std::span<const int32_t>(t.data(), std::size_t(prefix)));
    // Positions prefix .. ctx-2 are fed; position i predicts token i+1.
    for (int i = prefix; i < ctx - 1; i += options.block) {
      const int n = std::min(options.block, ctx - 1 - i);
      const std::span<const int32_t> span(t.data() + i, std::size_t(n));
      if (n == 1) {
        score(context.eval(span), t[std::size_t(i + 1)]);
      } else {
        context.eval(span, &block_logits);
        for (int j = 0; j < n; ++j) {
          score(block_logits.data() + std::size_t(j) * std::size_t(vocab),
                t[std::size_t(i + j + 1)]);
        }
      }
    }
    fed_tokens += ctx - 1;
    bits_per_element = context.cache().bits_per_element();
    cache_bytes = context.cache().bytes();
    bar.update(w + 1, fed_tokens);
  }
  bar.finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (save.is_open()) {
    save.close();
    if (!save) fail("writing '{}' failed", save_tmp);
    std::filesystem::rename(save_tmp, options.save_logits);
  }

  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? 0.0 : s / double(v.size());
  };
  auto stderr_of_mean = [&](const std::vector<double>& v) {
    const double m = mean(v);
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return v.size() > 1 ? std::sqrt(s / double(v.size() - 1) / double(v.size())) : 0.0;
  };
  const double mean_nll = mean(nll);
  const double ppl = std::exp(mean_nll);
  const double ppl_err = ppl * stderr_of_mean(nll);  // delta method
  const std::size_t scored = nll.size();

  fmt::print(
      "model: {} | kv: {} | {} windows of {} tokens (prefix {}, block {}) | {} scored tokens\n",
      loaded.model->config().name, options.model.kv, windows, ctx, prefix, options.block, scored);
  fmt::print(
      "perplexity: {:.4f} +/- {:.4f} | mean NLL {:.5f} | cache {:.2f} bits per element | "
      "{:.1f} s ({:.1f} tokens/s)\n",
      ppl, ppl_err, mean_nll, bits_per_element, seconds, double(fed_tokens) / seconds);
  nlohmann::json out = {
      {"model", loaded.model->config().name},
      {"text", options.text_path},
      {"kv", options.model.kv},
      {"k_bits", options.model.k_bits},
      {"v_bits", options.model.v_bits},
      {"subspace_dim", options.model.subspace_dim},
      {"context", ctx},
      {"prefix", prefix},
      {"block", options.block},
      {"windows", windows},
      {"scored_tokens", scored},
      {"mean_nll", mean_nll},
      {"perplexity", ppl},
      {"perplexity_stderr", ppl_err},
      {"bits_per_element", bits_per_element},
      {"cache_bytes_last_window", cache_bytes},
      {"seconds", seconds},
      {"threads", loaded.pool->size()},
      {"nll_per_token", nll},
  };
  if (compare) {
    const double base_ppl = std::exp(mean(base_nll));
    const double kl_mean = mean(kl), kl_p99 = percentile(kl, 99.0);
    const double kl_max = *std::max_element(kl.begin(), kl.end());
    const double top1 = double(agree) / double(scored);
    // Paired difference of NLL: the standard error of the perplexity difference.
    std::vector<double> diff(scored);
    for (std::size_t i = 0; i < scored; ++i) diff[i] = nll[i] - base_nll[i];
    const double dppl = ppl - base_ppl;
    fmt::print(
        "vs {}: KL mean {:.6f} +/- {:.6f}, p99 {:.6f}, max {:.6f} | top-1 agreement "
        "{:.4f} | base perplexity {:.4f}, delta {:+.4f} (mean delta NLL {:+.6f} +/- {:.6f})\n",
        options.kl_base, kl_mean, stderr_of_mean(kl), kl_p99, kl_max, top1, base_ppl, dppl,
        mean(diff), stderr_of_mean(diff));
    out["kl_base"] = options.kl_base;
    out["kl_mean"] = kl_mean;
    out["kl_mean_stderr"] = stderr_of_mean(kl);
    out["kl_p99"] = kl_p99;
    out["kl_max"] = kl_max;
    out["top1_agreement"] = top1;
    out["base_perplexity"] = base_ppl;
    out["delta_perplexity"] = dppl;
    out["delta_nll_mean"] = mean(diff);
    out["delta_nll_stderr"] = stderr_of_mean(diff);
    out["kl_per_token"] = kl;  // for paired comparisons of two methods on the same tokens
  }
  if (!options.json_path.empty()) write_file_atomically(options.json_path, out.dump(2) + "\n");
}

}  // namespace

void register_perplexity_command(CLI::App& app) {
  auto options = std::make_shared<PerplexityOptions>();
  options->model.context = 512;  // window length; the default before parsing
  auto* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity of a text with every scored token reading the KV cache; KL divergence "
      "against a saved full-precision run");
  add_model_options(*cmd, options->model);
  cmd->add_option("-f,--file", options->text_path,
                  "Text file (e.g. ../shared/data/wikitext-2-test.txt)")
      ->required();
  cmd->add_option("--chunks", options->chunks, "Windows of -c tokens to score (default 0: all)");
  cmd->add_option("--prefix", options->prefix,
                  "Tokens per window fed as one prompt before scoring (default: half the window)");
  cmd->add_option("--block", options->block,
                  "Tokens per eval after the prefix (default 1: token by token, as decoding)");
  cmd->add_option("--save-logits", options->save_logits,
                  "Write every scored token's log-probabilities (float32, vocab per token)");
  cmd->add_option("--kl-base", options->kl_base,
                  "Compare with a --save-logits file: KL divergence, top-1 agreement, "
                  "delta perplexity");
  cmd->add_option("--json", options->json_path, "Also write the results as JSON");
  cmd->callback([options] { perplexity(*options); });
}

}  // namespace squat::apps
