// The forward pass's cache backed by the KV-cache library (include/squat/kvcache.h): every
// method (f32, f16, int8, int4, kivi, squat) through one store. With a quantized method, each
// batch of the prompt (the prompt goes in chunks, of -b tokens) attends to itself in full
// precision, as the KIVI and SQuat references do with a whole prompt, and to the earlier
// chunks through the store (quantized part and full-precision window), as decoding does; what
// comes after the prompt (decoded tokens, later chat turns) attends through the store. SQuat
// builds its query subspace from all of the prompt's chunks (kv::LayerCache::add_queries: a
// Gram matrix per KV head, refined chunk by chunk, freed by finish_prompt).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/attention_cache.h"
#include "squat/kvcache.h"

namespace squat {

class StoreCache final : public AttentionCache {
 public:
  // `subspace_file`: SQuat states to load instead of computing them from the prompt.
  // `model_tag` (model_fingerprint) is written into saved subspace files, and a loaded file
  // tagged for another model is refused. Without `keep_subspace`, SQuat keeps only what its
  // quantizer needs of the subspace (about 4 MB less per sequence for SmolLM2-135M) and
  // save_subspace fails.
  // `shared_rope` (shared_rope_table): a RoPE table shared with other sequences' caches
  // instead of one of this cache's own (768 bytes per position at head_dim 64).
  StoreCache(const KvShape& shape, const RopeSpec& rope, const kv::CacheConfig& config,
             const std::string& subspace_file = "", const std::string& model_tag = "",
             bool keep_subspace = true, std::shared_ptr<kv::RopeTable> shared_rope = nullptr);

  // One read-only RoPE table of `positions` for all caches of this config (pre-RoPE keys;
  // null otherwise), e.g. the server's sequences, which run on different threads.
  static std::shared_ptr<kv::RopeTable> shared_rope_table(const RopeSpec& rope,
                                                          const kv::CacheConfig& config,
                                                          int positions);

  bool wants_queries(int layer) const override;
  void observe_queries(int layer, const float* q_before_rope, const float* q_after_rope, int n,
                       ThreadPool& pool) override;
  void append(int layer, const float* k, const float* v, int n) override;
  void append_and_attend(int layer, const float* k, const float* v, const float* q, int n,
                         int first_pos, float* out, ThreadPool& pool) override;
  void finish_prompt() override;
  int n_tokens() const override { return int(store_.tokens()); }
  int capacity() const override { return shape_.max_tokens; }
  std::size_t bytes() const override { return store_.bytes(); }
  double bits_per_element() const override { return store_.bits_per_element(); }
  void clear() override;

  const kv::KvCache& store() const { return store_; }
  const kv::CacheConfig& config() const { return config_; }
  // Writes the SQuat states of every layer (after a prompt was processed).
  void save_subspace(const std::string& path) const override;

 private:
  KvShape shape_;
  RopeSpec rope_;
  kv::CacheConfig config_;
  kv::KvCache store_;
  std::string model_tag_;
  bool keep_subspace_ = true;
  struct Batch {
    int first = 0;           // position of the batch's first token
    bool self_full = false;  // the batch attends to itself in full precision (a prompt chunk)
  };
  // Stores a batch for `layer`; rotates its keys into batch_keys_ when it attends to itself in
  // full precision or keys are stored post-RoPE.
  Batch store_batch(int layer, const float* k, const float* v, int n);

  // The current layer's batch keys, rotated (see store_batch).
  std::vector<float> batch_keys_;
  bool states_from_file_ = false;
  bool prompt_open_ = true;  // finish_prompt not called since the cache was empty
  std::vector<int> positions_;
  // A later prompt chunk: attention over the store and over itself, merged by log-sum-exp.
  std::vector<float> store_out_, store_lse_, self_lse_;
  // RoPE cos/sin (head_dim/2 each per token) of positions rope_first_ .. + rope_rows_, computed
  // by the first layer that rotates a batch and reused by the others.
  std::vector<float> rope_cs_;
  int rope_first_ = -1, rope_rows_ = 0;
};

}  // namespace squat
