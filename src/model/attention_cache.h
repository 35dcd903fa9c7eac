// The interface between the forward pass and a KV cache. The model hands the cache raw
// (un-rotated) keys and rotated queries; each cache decides whether it stores keys before or
// after RoPE and applies the rotation it needs, so quantized caches can keep pre-RoPE keys.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace squat {

class ThreadPool;

// How RoPE rotates one head vector: the angle of pair i at position p is p * inv_freq[i]
// (any frequency or linear position scaling is folded into inv_freq); `neox` pairs
// (i, i + d/2), otherwise (2i, 2i + 1).
struct RopeSpec {
  std::vector<float> inv_freq;
  bool neox = false;
};

struct KvShape {
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA: n_heads / n_kv_heads query heads share one)
  int head_dim = 0;
  int max_tokens = 0;  // context length the cache must hold
};

class AttentionCache {
 public:
  virtual ~AttentionCache() = default;

  // True when the cache wants this layer's queries of the coming batch (SQuat builds its
  // query subspace from the prompt's). The model then calls observe_queries before append.
  virtual bool wants_queries(int /*layer*/) const { return false; }
  // q_before_rope and q_after_rope are [n, n_heads, head_dim].
  virtual void observe_queries(int /*layer*/, const float* /*q_before_rope*/,
                               const float* /*q_after_rope*/, int /*n*/, ThreadPool& /*pool*/) {}

  // Stores n tokens for `layer` at the next n positions. k and v are [n, n_kv_heads, head_dim];
  // keys are not yet rotated. Every layer receives the same tokens in order, layer 0 first.
  virtual void append(int layer, const float* k, const float* v, int n) = 0;

  // For query i (at position first_pos + i, already rotated) and every query head, attention
  // over the cached tokens at positions <= first_pos + i, scaled by 1/sqrt(head_dim).
  // q and out are [n, n_heads, head_dim].
  virtual void attend(int layer, const float* q, int n, int first_pos, float* out,
                      ThreadPool& pool) = 0;

  // The prompt (every token fed since the cache was empty) is complete: called once its last
  // batch went through every layer, before the first decoded token. A cache may treat the
  // prompt's batches specially until then (SQuat gathers the queries of all of them) and free
  // what only the prompt needed. Later calls change nothing.
  virtual void finish_prompt() {}

  virtual int n_tokens() const = 0;       // tokens stored (after every layer got them)
  virtual int capacity() const = 0;       // most tokens it can hold
  virtual std::size_t bytes() const = 0;  // bytes holding cached data for those tokens
  // Stored bits per cached key or value element (bytes()*8 / elements); 0 when empty.
  virtual double bits_per_element() const = 0;
  virtual void clear() = 0;
};

// A cache that hands every call to another one: a base for wrappers that watch what the model
// gives the cache (the GSM8K prefix recorder, quant --from-model's capture) and override only
// the calls they watch.
class ForwardingCache : public AttentionCache {
 public:
  explicit ForwardingCache(std::unique_ptr<AttentionCache> inner) : inner_(std::move(inner)) {}

  bool wants_queries(int layer) const override { return inner_->wants_queries(layer); }
  void observe_queries(int layer, const float* q_before_rope, const float* q_after_rope, int n,
                       ThreadPool& pool) override {
    inner_->observe_queries(layer, q_before_rope, q_after_rope, n, pool);
  }
  void append(int layer, const float* k, const float* v, int n) override {
    inner_->append(layer, k, v, n);
  }
  void attend(int layer, const float* q, int n, int first_pos, float* out,
              ThreadPool& pool) override {
    inner_->attend(layer, q, n, first_pos, out, pool);
  }
  void finish_prompt() override { inner_->finish_prompt(); }
  int n_tokens() const override { return inner_->n_tokens(); }
  int capacity() const override { return inner_->capacity(); }
  std::size_t bytes() const override { return inner_->bytes(); }
  double bits_per_element() const override { return inner_->bits_per_element(); }
  void clear() override { inner_->clear(); }

 protected:
  std::unique_ptr<AttentionCache> inner_;
};

}  // namespace squat
