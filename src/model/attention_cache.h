// The interface between the forward pass and a KV cache. The model hands the cache raw
// (un-rotated) keys and rotated queries; each cache decides whether it stores keys before or
// after RoPE and applies the rotation it needs, so quantized caches can keep pre-RoPE keys.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"

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

  // Stores n tokens for `layer` at the next n positions without attending (replaying a
  // recorded prompt, sizing a cache). k and v are [n, n_kv_heads, head_dim]; keys are not yet
  // rotated. Every layer receives the same tokens in order, layer 0 first.
  virtual void append(int layer, const float* k, const float* v, int n) = 0;

  // The forward pass's call, once per layer and batch: stores the batch's n tokens (as append,
  // at positions first_pos ..) and then, for query i (at position first_pos + i, already
  // rotated) and every query head, computes attention over the cached tokens at positions
  // <= first_pos + i, the batch's own included, scaled by 1/sqrt(head_dim). q and out are
  // [n, n_heads, head_dim]; k, v and q are read only during the call.
  virtual void append_and_attend(int layer, const float* k, const float* v, const float* q, int n,
                                 int first_pos, float* out, ThreadPool& pool) = 0;

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

  // Writes the SQuat query-subspace states of every layer (after a prompt) to `path`, for
  // --load-subspace; a cache without them refuses.
  virtual void save_subspace(const std::string& /*path*/) const {
    fail("--save-subspace needs a squat cache that keeps its subspace");
  }
};

// A cache that hands every call to another one: a base for wrappers that watch what the model
// gives the cache (the GSM8K prefix recorder, quant --from-model's capture). They see every
// stored batch through on_append, whichever call stored it, and override the calls they watch.
class ForwardingCache : public AttentionCache {
 public:
  explicit ForwardingCache(std::unique_ptr<AttentionCache> inner) : inner_(std::move(inner)) {}

  bool wants_queries(int layer) const override { return inner_->wants_queries(layer); }
  void observe_queries(int layer, const float* q_before_rope, const float* q_after_rope, int n,
                       ThreadPool& pool) override {
    inner_->observe_queries(layer, q_before_rope, q_after_rope, n, pool);
  }
  void append(int layer, const float* k, const float* v, int n) override {
    on_append(layer, k, v, n);
    inner_->append(layer, k, v, n);
  }
  void append_and_attend(int layer, const float* k, const float* v, const float* q, int n,
                         int first_pos, float* out, ThreadPool& pool) override {
    on_append(layer, k, v, n);
    inner_->append_and_attend(layer, k, v, q, n, first_pos, out, pool);
  }
  void finish_prompt() override { inner_->finish_prompt(); }
  int n_tokens() const override { return inner_->n_tokens(); }
  int capacity() const override { return inner_->capacity(); }
  std::size_t bytes() const override { return inner_->bytes(); }
  double bits_per_element() const override { return inner_->bits_per_element(); }
  void clear() override { inner_->clear(); }
  void save_subspace(const std::string& path) const override { inner_->save_subspace(path); }

 protected:
  // A batch of n tokens for `layer` (as append takes them), before the inner cache stores it.
  virtual void on_append(int /*layer*/, const float* /*k*/, const float* /*v*/, int /*n*/) {}

  std::unique_ptr<AttentionCache> inner_;
};

}  // namespace squat
