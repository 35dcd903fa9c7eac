#include "server/admission.h"

#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/store_cache.h"

namespace squat::server {

std::size_t parse_byte_size(const std::string& text, const std::string& flag) {
  auto refuse = [&]() -> std::size_t {
    fail_usage("{} expects a size such as 1GiB, 256MiB, 64MB or a number of bytes, got '{}'", flag,
               text);
  };
  std::size_t digits = 0;
  while (digits < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.')) {
    ++digits;
  }
  if (digits == 0) refuse();
  double number = 0;
  try {
    std::size_t used = 0;
    number = std::stod(text.substr(0, digits), &used);
    if (used != digits) refuse();
  } catch (const std::exception&) {
    refuse();
  }
  std::string unit = text.substr(digits);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char ch) { return char(std::tolower(ch)); });
  double scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  if (unit == "kib" || unit == "k") scale = 1024.0;
  if (unit == "mib" || unit == "m") scale = 1024.0 * 1024;
  if (unit == "gib" || unit == "g") scale = 1024.0 * 1024 * 1024;
  if (unit == "kb") scale = 1e3;
  if (unit == "mb") scale = 1e6;
  if (unit == "gb") scale = 1e9;
  if (scale == 0) refuse();
  const double bytes = std::floor(number * scale);
  if (!(bytes >= 1)) fail_usage("{} must be at least 1 byte, got '{}'", flag, text);
  if (bytes > std::pow(2.0, 50)) fail_usage("{} must be at most 1PiB, got '{}'", flag, text);
  return std::size_t(bytes);
}

std::size_t CacheFootprint::fixed_bytes(int prompt_rows) const {
  for (const auto& [rows, bytes] : fixed_by_prompt) {
    if (rows >= prompt_rows) return bytes;
  }
  return fixed_by_prompt.empty() ? 0 : fixed_by_prompt.back().second;
}

std::size_t CacheFootprint::bytes_for(int prompt_rows, int tokens) const {
  return fixed_bytes(prompt_rows) +
         std::size_t(std::ceil(per_token_bytes * double(tokens + slack_tokens)));
}

namespace {

// Heap bytes in use by this process (glibc: small blocks plus mmap-ed large ones).
std::size_t heap_in_use() {
  const struct mallinfo2 info = mallinfo2();
  return info.uordblks + info.hblkhd;
}

// Builds a cache of capacity `tokens` and fills it as the server does: a prompt of
// `prompt_rows` in one batch (what a batch leaves behind, such as quantization scratch sized
// for it, stays with the cache), then one token at a time. Returns the bytes it holds.
std::size_t filled_cache_bytes(const KvShape& base, const RopeSpec& rope,
                               const kv::CacheConfig& config, ThreadPool& pool, int prompt_rows,
                               int tokens, const std::shared_ptr<kv::RopeTable>& shared_rope) {
  KvShape shape = base;
  shape.max_tokens = tokens;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto kv_count = std::size_t(tokens) * std::size_t(shape.n_kv_heads * shape.head_dim);
  const auto q_count = std::size_t(prompt_rows) * std::size_t(shape.n_heads * shape.head_dim);
  std::vector<float> k(kv_count), v(kv_count), q(q_count);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  for (float& x : q) x = normal(rng);
  const auto row = std::size_t(shape.n_kv_heads * shape.head_dim);

  const std::size_t before = heap_in_use();
  std::size_t measured = 0, accounted = 0;
  {
    // As the server's caches (make_cache without --save-subspace): SQuat keeps only W.
    StoreCache cache(shape, rope, config, "", "", /*keep_subspace=*/false, shared_rope);
    for (int l = 0; l < shape.n_layers; ++l) {
      if (cache.wants_queries(l)) cache.observe_queries(l, q.data(), q.data(), prompt_rows, pool);
      cache.append(l, k.data(), v.data(), prompt_rows);
    }
    cache.finish_prompt();  // as the scheduler's last prompt chunk does
    for (int t = prompt_rows; t < tokens; ++t) {
      for (int l = 0; l < shape.n_layers; ++l) {
        cache.append(l, k.data() + std::size_t(t) * row, v.data() + std::size_t(t) * row, 1);
      }
    }
    const std::size_t after = heap_in_use();
    measured = after > before ? after - before : 0;
    accounted = cache.store().allocated_bytes();
    for (int l = 0; l < shape.n_layers; ++l) accounted += cache.store().layer(l).state_bytes();
  }
  return std::max(measured, accounted);
}

}  // namespace

CacheFootprint measure_cache_footprint(const KvShape& shape, const RopeSpec& rope,
                                       const kv::CacheConfig& config, ThreadPool& pool,
                                       int max_prompt_rows, bool shared_rope) {
  std::vector<int> prompts;
  for (int p = 32; p < max_prompt_rows; p *= 2) prompts.push_back(p);
  prompts.push_back(std::max(1, max_prompt_rows));
  const int p0 = prompts.front(), decode = 128;
  const int longest = std::max(p0 + 3 * decode, prompts.back() + decode);
  const std::shared_ptr<kv::RopeTable> table =
      shared_rope ? StoreCache::shared_rope_table(rope, config, longest) : nullptr;
  auto filled = [&](int prompt_rows, int tokens) {
    return filled_cache_bytes(shape, rope, config, pool, prompt_rows, tokens, table);
  };
  // A first fill warms what is allocated once per process (per-thread scratch), so it does not
  // count as part of one sequence.
  filled(p0, p0 + decode);
  // Two lengths past the same prompt: their difference is the cost per token.
  const std::size_t b1 = filled(p0, p0 + decode);
  const std::size_t b2 = filled(p0, p0 + 3 * decode);
  CacheFootprint f;
  f.per_token_bytes =
      b2 > b1 ? double(b2 - b1) / double(2 * decode) : double(b2) / (p0 + 3.0 * decode);
  f.slack_tokens = config.quantized() ? config.group_size : 0;
  // The rest of each prompt size's bytes is its fixed part (never below a smaller prompt's).
  std::size_t fixed = 0;
  for (int p : prompts) {
    const std::size_t b = p == p0 ? b1 : filled(p, p + decode);
    const double rest = double(b) - f.per_token_bytes * double(p + decode);
    fixed = std::max(fixed, rest > 0 ? std::size_t(rest) : std::size_t(0));
    f.fixed_by_prompt.emplace_back(p, fixed);
  }
  return f;
}

AdmissionBudget::AdmissionBudget(std::size_t budget_bytes, int max_sequences)
    : budget_(budget_bytes), max_sequences_(max_sequences) {}

bool AdmissionBudget::fits(std::size_t bytes) const {
  return active_ < max_sequences_ && bytes <= budget_ - in_use_;
}

void AdmissionBudget::reserve(std::size_t bytes) {
  in_use_ += bytes;
  ++active_;
}

void AdmissionBudget::release(std::size_t bytes) {
  in_use_ -= std::min(bytes, in_use_);
  if (active_ > 0) --active_;
}

}  // namespace squat::server
