#include "model/store_cache.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/dense_attention.h"
#include "squat/rope.h"

namespace squat {

namespace {

kv::RopeSpec library_rope(const RopeSpec& rope) {
  return kv::RopeSpec{rope.inv_freq, rope.neox ? kv::RopeLayout::Neox : kv::RopeLayout::Normal};
}

}  // namespace

StoreCache::StoreCache(const KvShape& shape, const RopeSpec& rope, const kv::CacheConfig& config,
                       const std::string& subspace_file, const std::string& model_tag,
                       bool keep_subspace, std::shared_ptr<kv::RopeTable> shared_rope)
    : shape_(shape),
      rope_(rope),
      config_((config.validate(shape.head_dim), config)),
      store_(shared_rope ? kv::KvCache(config, shape.n_layers, shape.n_kv_heads, shape.head_dim,
                                       std::move(shared_rope))
                         : kv::KvCache(config, shape.n_layers, shape.n_kv_heads, shape.head_dim,
                                       library_rope(rope))),
      model_tag_(model_tag),
      keep_subspace_(keep_subspace) {
  for (int l = 0; l < shape.n_layers; ++l) store_.layer(l).reserve(std::size_t(shape.max_tokens));
  if (!subspace_file.empty()) {
    if (config.method != kv::CacheMethod::Squat) {
      fail_usage("--load-subspace needs --kv squat (the cache method is {})",
                 kv::to_string(config.method));
    }
    store_.load_states(subspace_file, model_tag_);
    states_from_file_ = true;
    if (!keep_subspace_) {
      for (int l = 0; l < shape.n_layers; ++l) store_.layer(l).drop_state_metrics();
    }
  }
}

std::shared_ptr<kv::RopeTable> StoreCache::shared_rope_table(const RopeSpec& rope,
                                                             const kv::CacheConfig& config,
                                                             int positions) {
  if (config.key_rope != kv::KeyRope::Pre) return nullptr;
  return std::make_shared<kv::RopeTable>(library_rope(rope), std::size_t(std::max(positions, 1)));
}

bool StoreCache::wants_queries(int layer) const {
  return config_.method == kv::CacheMethod::Squat && !states_from_file_ &&
         (prompt_open_ || !store_.layer(layer).has_states());
}

void StoreCache::observe_queries(int layer, const float* q_before_rope, const float* q_after_rope,
                                 int n, ThreadPool& pool) {
  const float* q = config_.query_rope == kv::QueryRope::After ? q_after_rope : q_before_rope;
  store_.layer(layer).add_queries(q, std::size_t(n), shape_.n_heads, &pool);
  if (!keep_subspace_) store_.layer(layer).drop_state_metrics();
}

StoreCache::Batch StoreCache::store_batch(int layer, const float* k, const float* v, int n) {
  kv::LayerCache& cache = store_.layer(layer);
  if (int(cache.tokens()) + n > shape_.max_tokens) {
    fail("context is full: {} tokens cached + {} new > context size {}", cache.tokens(), n,
         shape_.max_tokens);
  }
  const int first = int(cache.tokens());
  const auto d = std::size_t(shape_.head_dim);
  const std::size_t count = std::size_t(n) * std::size_t(shape_.n_kv_heads) * d;
  // Quantized methods: a prompt chunk attends to its own keys and values in full precision (as
  // the references do with a whole prompt), not to their quantized copies. Full-precision
  // methods read the store, so a prompt in any chunks and the same tokens fed one at a time
  // compute exactly the same attention.
  const Batch batch{first, prompt_open_ && n > 1 && config_.quantized()};
  const bool post_rope = config_.key_rope == kv::KeyRope::Post;
  if (batch.self_full || post_rope) {
    batch_keys_.assign(k, k + count);
    const std::size_t half = d / 2;
    if (first != rope_first_ || n > rope_rows_) {  // the batch's cos/sin, once for all layers
      rope_cs_.resize(std::size_t(n) * d);
      for (int t = 0; t < n; ++t) {
        float* cs = rope_cs_.data() + std::size_t(t) * d;
        rope_cos_sin(first + t, rope_.inv_freq.data(), half, cs, cs + half);
      }
      rope_first_ = first;
      rope_rows_ = n;
    }
    for (int t = 0; t < n; ++t) {
      const float* cs = rope_cs_.data() + std::size_t(t) * d;
      for (int h = 0; h < shape_.n_kv_heads; ++h) {
        rope_apply(batch_keys_.data() +
                       (std::size_t(t) * std::size_t(shape_.n_kv_heads) + std::size_t(h)) * d,
                   d, cs, cs + half, rope_.neox ? RopeLayout::Neox : RopeLayout::Normal);
      }
    }
  }
  cache.append(post_rope ? batch_keys_.data() : k, v, std::size_t(n));
  return batch;
}

void StoreCache::append(int layer, const float* k, const float* v, int n) {
  store_batch(layer, k, v, n);
}

void StoreCache::append_and_attend(int layer, const float* k, const float* v, const float* q, int n,
                                   int first_pos, float* out, ThreadPool& pool) {
  const Batch batch = store_batch(layer, k, v, n);
  if (batch.self_full && batch.first == 0) {
    causal_attention(shape_, q, n, first_pos, batch_keys_.data(), v, n, out, pool);
    return;
  }
  if (batch.self_full) {
    // Earlier tokens through the store (each query sees positions < batch_first_), the batch
    // itself in full precision; the two softmaxes merged by their log denominators.
    const auto rows = std::size_t(n) * std::size_t(shape_.n_heads);
    const auto d = std::size_t(shape_.head_dim);
    store_out_.resize(rows * d);
    store_lse_.resize(rows);
    self_lse_.resize(rows);
    positions_.assign(std::size_t(n), batch.first - 1);
    store_.layer(layer).attend(q, std::size_t(n), shape_.n_heads, positions_.data(),
                               store_out_.data(), &pool, store_lse_.data());
    causal_attention(shape_, q, n, 0, batch_keys_.data(), v, n, out, pool, self_lse_.data());
    for (std::size_t r = 0; r < rows; ++r) {
      const float a = store_lse_[r], b = self_lse_[r], m = std::max(a, b);
      const float wa = std::exp(a - m), wb = std::exp(b - m), inv = 1.0f / (wa + wb);
      const float* so = store_out_.data() + r * d;
      float* o = out + r * d;
      for (std::size_t c = 0; c < d; ++c) o[c] = (wa * so[c] + wb * o[c]) * inv;
    }
    return;
  }
  positions_.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) positions_[std::size_t(i)] = first_pos + i;
  store_.layer(layer).attend(q, std::size_t(n), shape_.n_heads, positions_.data(), out, &pool);
}

void StoreCache::finish_prompt() {
  if (!prompt_open_) return;
  prompt_open_ = false;
  for (int l = 0; l < shape_.n_layers; ++l) store_.layer(l).end_queries();
  // Chunk-sized buffers (post-RoPE keys keep theirs: every decoded token is rotated there).
  if (config_.key_rope == kv::KeyRope::Pre) std::vector<float>().swap(batch_keys_);
  std::vector<float>().swap(store_out_);
  std::vector<float>().swap(store_lse_);
  std::vector<float>().swap(self_lse_);
}

void StoreCache::clear() {
  store_.clear();
  prompt_open_ = true;
  // A new sequence builds its subspace from its own prompt, unless it came from a file.
  if (!states_from_file_) {
    for (int l = 0; l < shape_.n_layers; ++l) store_.layer(l).clear_states();
  }
}

void StoreCache::save_subspace(const std::string& path) const {
  store_.save_states(path, model_tag_);
}

}  // namespace squat
