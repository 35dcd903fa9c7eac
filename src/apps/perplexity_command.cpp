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
#include <optional>
#include <string>
#include <vector>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "apps/quality_progress.h"
#include "apps/stats.h"
#include "core/error.h"
#include "core/files.h"
#include "core/hash.h"

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

// The windows a run scores: `ctx` tokens each (BOS first when the model wants one), cut from
// the text one after another, and the hash of all of them that ties a logits file to them.
struct Windows {
  std::vector<std::vector<int32_t>> tokens;
  uint64_t hash = 0;
};

Windows cut_windows(const PerplexityOptions& options, const Tokenizer& tokenizer) {
  const int ctx = options.model.context;
  const std::vector<int32_t> all = tokenizer.encode(read_text_file(options.text_path, "text file"),
                                                    false, false);
  const bool bos = tokenizer.add_bos() && tokenizer.bos() >= 0;
  const int per_window = ctx - (bos ? 1 : 0);
  const int available = int(all.size()) / per_window;
  if (available < 1) {
    fail("'{}' has {} tokens, fewer than one window of {} (lower -c/--context)", options.text_path,
         all.size(), per_window);
  }
  const int count = options.chunks > 0 ? std::min(options.chunks, available) : available;
  Windows windows;
  Fnv1a hash;
  for (int w = 0; w < count; ++w) {
    std::vector<int32_t>& t = windows.tokens.emplace_back();
    if (bos) t.push_back(tokenizer.bos());
    t.insert(t.end(), all.begin() + std::ptrdiff_t(w) * per_window,
             all.begin() + std::ptrdiff_t(w + 1) * per_window);
    hash.add(t.data(), t.size() * sizeof(int32_t));  // little-endian bytes of each token
  }
  windows.hash = hash.value();
  return windows;
}

// Reads a --save-logits file row by row after checking that it was written for the same
// tokens and windows and is complete.
class LogitsReader {
 public:
  LogitsReader(const std::string& path, const LogitsHeader& expected) : path_(path) {
    in_.open(path, std::ios::binary);
    if (!in_) fail("cannot open --kl-base '{}': {}", path, std::strerror(errno));
    LogitsHeader got;
    in_.read(reinterpret_cast<char*>(&got), sizeof got);
    if (!in_ || std::memcmp(got.magic, expected.magic, sizeof got.magic) != 0) {
      fail("'{}' is not a logits file written by squat perplexity --save-logits", path);
    }
    if (got.vocab != expected.vocab || got.ctx != expected.ctx || got.prefix != expected.prefix ||
        got.windows != expected.windows || got.token_hash != expected.token_hash) {
      fail(
          "'{}' was saved for another text, model or window setting (vocab {}, -c {}, prefix {}, "
          "{} windows); this run has vocab {}, -c {}, prefix {}, {} windows",
          path, got.vocab, got.ctx, got.prefix, got.windows, expected.vocab, expected.ctx,
          expected.prefix, expected.windows);
    }
    const auto size = sizeof got + std::uintmax_t(got.windows) * got.scored_per_window *
                                       got.vocab * sizeof(float);
    if (std::filesystem::file_size(path) != size) {
      fail("'{}' is truncated: expected {} bytes", path, size);
    }
  }

  void read_row(float* row, int vocab) {
    in_.read(reinterpret_cast<char*>(row), std::streamsize(std::size_t(vocab) * sizeof(float)));
    if (!in_) fail("'{}' ended early", path_);
  }

 private:
  std::string path_;
  std::ifstream in_;
};

// Per scored token: its negative log-likelihood and, against a base run, the base's, the KL
// divergence KL(base || this) and whether both put the same token first.
struct Scores {
  std::vector<double> nll, base_nll, kl;
  long agree = 0;
};

void score_token(const std::vector<float>& logp, const std::vector<float>* base_logp,
                 int32_t target, Scores& scores) {
  const int vocab = int(logp.size());
  scores.nll.push_back(-double(logp[std::size_t(target)]));
  if (!base_logp) return;
  const std::vector<float>& base = *base_logp;
  double kl = 0;
  for (int v = 0; v < vocab; ++v) {
    const double lb = base[std::size_t(v)];
    kl += std::exp(lb) * (lb - double(logp[std::size_t(v)]));
  }
  scores.kl.push_back(kl);
  scores.base_nll.push_back(-double(base[std::size_t(target)]));
  scores.agree += argmax(base.data(), vocab) == argmax(logp.data(), vocab);
}

struct RunFacts {
  std::string model_name;
  int windows = 0, prefix = 0, threads = 0;
  long fed_tokens = 0;
  double seconds = 0, bits_per_element = 0;
  std::size_t cache_bytes = 0;
};

void report(const PerplexityOptions& options, const RunFacts& run, const Scores& scores) {
  const double mean_nll = mean(scores.nll);
  const double ppl = std::exp(mean_nll);
  const double ppl_err = ppl * stderr_of_mean(scores.nll);  // delta method
  const std::size_t scored = scores.nll.size();
  fmt::print(
      "model: {} | kv: {} | {} windows of {} tokens (prefix {}, block {}) | {} scored tokens\n",
      run.model_name, kv::to_string(options.model.kv), run.windows, options.model.context,
      run.prefix, options.block, scored);
  fmt::print(
      "perplexity: {:.4f} +/- {:.4f} | mean NLL {:.5f} | cache {:.2f} bits per element | "
      "{:.1f} s ({:.1f} tokens/s)\n",
      ppl, ppl_err, mean_nll, run.bits_per_element, run.seconds,
      double(run.fed_tokens) / run.seconds);
  nlohmann::json out = {
      {"model", run.model_name},
      {"text", options.text_path},
      {"kv", kv::to_string(options.model.kv)},
      {"k_bits", options.model.k_bits},
      {"v_bits", options.model.v_bits},
      {"subspace_dim", options.model.subspace_dim},
      {"context", options.model.context},
      {"prefix", run.prefix},
      {"block", options.block},
      {"windows", run.windows},
      {"scored_tokens", scored},
      {"mean_nll", mean_nll},
      {"perplexity", ppl},
      {"perplexity_stderr", ppl_err},
      {"bits_per_element", run.bits_per_element},
      {"cache_bytes_last_window", run.cache_bytes},
      {"seconds", run.seconds},
      {"threads", run.threads},
      {"nll_per_token", scores.nll},
  };
  if (!options.kl_base.empty()) {
    const double base_ppl = std::exp(mean(scores.base_nll));
    const double kl_mean = mean(scores.kl), kl_p99 = percentile(scores.kl, 99.0);
    const double kl_max = *std::max_element(scores.kl.begin(), scores.kl.end());
    const double top1 = double(scores.agree) / double(scored);
    // Paired difference of NLL: the standard error of the perplexity difference.
    std::vector<double> diff(scored);
    for (std::size_t i = 0; i < scored; ++i) diff[i] = scores.nll[i] - scores.base_nll[i];
    const double dppl = ppl - base_ppl;
    fmt::print(
        "vs {}: KL mean {:.6f} +/- {:.6f}, p99 {:.6f}, max {:.6f} | top-1 agreement "
        "{:.4f} | base perplexity {:.4f}, delta {:+.4f} (mean delta NLL {:+.6f} +/- {:.6f})\n",
        options.kl_base, kl_mean, stderr_of_mean(scores.kl), kl_p99, kl_max, top1, base_ppl, dppl,
        mean(diff), stderr_of_mean(diff));
    out["kl_base"] = options.kl_base;
    out["kl_mean"] = kl_mean;
    out["kl_mean_stderr"] = stderr_of_mean(scores.kl);
    out["kl_p99"] = kl_p99;
    out["kl_max"] = kl_max;
    out["top1_agreement"] = top1;
    out["base_perplexity"] = base_ppl;
    out["delta_perplexity"] = dppl;
    out["delta_nll_mean"] = mean(diff);
    out["delta_nll_stderr"] = stderr_of_mean(diff);
    out["kl_per_token"] = scores.kl;  // for paired comparisons of two methods on the same tokens
  }
  if (!options.json_path.empty()) write_file_atomically(options.json_path, out.dump(2) + "\n");
}

// The prefix length after checking every option (usage errors before the model loads).
int checked_prefix(const PerplexityOptions& options) {
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
  return prefix;
}

void perplexity(const PerplexityOptions& options) {
  const int prefix = checked_prefix(options);
  const int ctx = options.model.context;
  LoadedModel loaded = load_model(options.model);
  InferenceContext& context = *loaded.context;
  const int vocab = loaded.model->config().vocab_size;
  const Windows windows = cut_windows(options, *loaded.tokenizer);
  const int n_windows = int(windows.tokens.size());

  LogitsHeader header;
  header.vocab = uint32_t(vocab);
  header.ctx = uint32_t(ctx);
  header.prefix = uint32_t(prefix);
  header.block = uint32_t(options.block);
  header.windows = uint32_t(n_windows);
  header.scored_per_window = uint32_t(ctx - prefix - 1);
  header.token_hash = windows.hash;
  std::optional<AtomicFile> save;
  if (!options.save_logits.empty()) {
    save.emplace(options.save_logits);
    save->write(&header, sizeof header);
  }
  std::optional<LogitsReader> base;
  if (!options.kl_base.empty()) base.emplace(options.kl_base, header);

  auto logp = std::vector<float>(std::size_t(vocab)), base_logp = logp;
  std::vector<float> block_logits;
  Scores scores;
  RunFacts run{loaded.model->config().name, n_windows, prefix, loaded.pool->size()};
  ProgressBar bar("perplexity", n_windows, "tok");
  const auto start = std::chrono::steady_clock::now();
  const auto score = [&](const float* logits, int32_t target) {
    log_softmax(logits, vocab, logp.data());
    if (save) save->write(logp.data(), std::size_t(vocab) * sizeof(float));
    if (base) base->read_row(base_logp.data(), vocab);
    score_token(logp, base ? &base_logp : nullptr, target, scores);
  };
  for (int w = 0; w < n_windows; ++w) {
    const std::vector<int32_t>& t = windows.tokens[std::size_t(w)];
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
    run.fed_tokens += ctx - 1;
    run.bits_per_element = context.cache().bits_per_element();
    run.cache_bytes = context.cache().bytes();
    bar.update(w + 1, run.fed_tokens);
  }
  bar.finish();
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (save) save->commit();
  report(options, run, scores);
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
