// Admission by memory: what one sequence's KV cache will take (measured on real caches, per
// method), and the budget the scheduler admits sequences against.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "model/attention_cache.h"
#include "squat/kvcache.h"

namespace squat {
class ThreadPool;
}

namespace squat::server {

// "1GiB", "256MiB", "64MB", "512KiB", "1048576" (bytes); a unit is KiB/MiB/GiB (powers of 1024),
// KB/MB/GB (powers of 1000) or B, case-insensitive; fractions like "1.5GiB" are allowed.
// fail_usage naming `flag` for anything else, zero, or more than 1 PiB.
std::size_t parse_byte_size(const std::string& text, const std::string& flag);

// Bytes one sequence's cache holds: a part fixed for the sequence plus a part per token.
// The fixed part (SQuat's per-prompt subspace states, the full-precision window, flush scratch,
// RoPE rows) grows with the largest batch of tokens the cache was given at once, the prompt
// chunk: the store keeps what it sized for that batch until the sequence ends. So it is
// measured for several prompt sizes, and a request is charged the one at or above its own.
// `slack_tokens` (one quantization group) covers group rounding: a key group is allocated whole.
struct CacheFootprint {
  std::vector<std::pair<int, std::size_t>> fixed_by_prompt;  // (prompt rows, bytes), ascending
  double per_token_bytes = 0;
  int slack_tokens = 0;
  // A cache of `tokens` whose largest batch (prompt chunk) was `prompt_rows`.
  std::size_t bytes_for(int prompt_rows, int tokens) const;
  std::size_t fixed_bytes(int prompt_rows) const;
};

// Measures the footprint on real caches of this method, filled as the server fills them: a
// prompt in one batch, then tokens one at a time; prompts of 32, 64, 128, ... up to
// `max_prompt_rows` (the prefill chunk) tokens give the fixed part, two lengths past the
// smallest prompt the cost per token. Random keys and values; SQuat builds its subspace from
// random queries, as a prompt would. The bytes are the heap the cache holds by glibc's
// allocator statistics (everything it allocated, RoPE tables and scratch included), never less
// than the cache's own accounting of its storage and SQuat states (sanitizer builds, where the
// statistics read zero). With `shared_rope`, the caches use one RoPE table made before the
// measurement, as the server's sequences share one (StoreCache::shared_rope_table): it is then
// not part of any sequence's bytes.
CacheFootprint measure_cache_footprint(const KvShape& shape, const RopeSpec& rope,
                                       const kv::CacheConfig& config, ThreadPool& pool,
                                       int max_prompt_rows = 512, bool shared_rope = false);

// Bytes of the budget reserved by admitted sequences; one scheduler thread owns it.
class AdmissionBudget {
 public:
  AdmissionBudget(std::size_t budget_bytes, int max_sequences);

  // Whether a sequence of `bytes` fits now (budget left and a free sequence slot).
  bool fits(std::size_t bytes) const;
  // Whether it could ever fit (an empty server).
  bool could_ever_fit(std::size_t bytes) const { return bytes <= budget_; }
  void reserve(std::size_t bytes);
  void release(std::size_t bytes);

  std::size_t budget() const { return budget_; }
  std::size_t in_use() const { return in_use_; }
  int active() const { return active_; }
  int max_sequences() const { return max_sequences_; }

 private:
  std::size_t budget_;
  int max_sequences_;
  std::size_t in_use_ = 0;
  int active_ = 0;
};

}  // namespace squat::server
