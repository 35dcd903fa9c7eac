// The forward pass's cache backed by the KV-cache library (include/squat/kvcache.h): every
// method (f32, f16, int8, int4, kivi, squat) through one store. With a quantized method, the
// first batch of a sequence (the prompt) attends to itself in full precision, as the KIVI and
// SQuat references do; what comes later (decoded tokens, later chat turns) attends through the
// store, reading the quantized cache.
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
  StoreCache(const KvShape& shape, const RopeSpec& rope, const kv::CacheConfig& config,
             const std::string& subspace_file = "", const std::string& model_tag = "",
             bool keep_subspace = true);

  bool wants_queries(int layer) const override;
  void observe_queries(int layer, const float* q_before_rope, const float* q_after_rope, int n,
                       ThreadPool& pool) override;
  void append(int layer, const float* k, const float* v, int n) override;
  void attend(int layer, const float* q, int n, int first_pos, float* out,
              ThreadPool& pool) override;
  int n_tokens() const override { return int(store_.tokens()); }
  int capacity() const override { return shape_.max_tokens; }
  std::size_t bytes() const override { return store_.bytes(); }
  double bits_per_element() const override { return store_.bits_per_element(); }
  void clear() override;

  const kv::KvCache& store() const { return store_; }
  const kv::CacheConfig& config() const { return config_; }
  // Writes the SQuat states of every layer (after a prompt was processed).
  void save_subspace(const std::string& path) const;

 private:
  KvShape shape_;
  RopeSpec rope_;
  kv::CacheConfig config_;
  kv::KvCache store_;
  std::string model_tag_;
  bool keep_subspace_ = true;
  // The prompt batch of the current layer: rotated keys, and values (the model's buffer, valid
  // until attend), so the prompt attends to itself in full precision.
  std::vector<float> batch_keys_;
  const float* batch_values_ = nullptr;
  int batch_tokens_ = 0;
  bool states_from_file_ = false;
  bool batch_is_prompt_ = false;  // the layer's current batch started from an empty cache
  std::vector<int> positions_;
};

}  // namespace squat
