#include "model/store_cache.h"

#include <algorithm>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/dense_attention.h"

namespace squat {

namespace {

kv::RopeSpec library_rope(const RopeSpec& rope) {
  return kv::RopeSpec{rope.inv_freq, rope.neox ? kv::RopeLayout::Neox : kv::RopeLayout::Normal};
}

}  // namespace

StoreCache::StoreCache(const KvShape& shape, const RopeSpec& rope, const kv::CacheConfig& config,
                       const std::string& subspace_file, const std::string& model_tag,
                       bool keep_subspace)
    : shape_(shape),
      rope_(rope),
      config_((config.validate(shape.head_dim), config)),
      store_(config, shape.n_layers, shape.n_kv_heads, shape.head_dim, library_rope(rope)),
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

bool StoreCache::wants_queries(int layer) const {
  return config_.method == kv::CacheMethod::Squat && !store_.layer(layer).has_states();
}

void StoreCache::observe_queries(int layer, const float* q_before_rope, const float* q_after_rope,
                                 int n, ThreadPool& pool) {
  const float* q = config_.query_rope == kv::QueryRope::After ? q_after_rope : q_before_rope;
  store_.layer(layer).set_queries(q, std::size_t(n), shape_.n_heads, &pool);
  if (!keep_subspace_) store_.layer(layer).drop_state_metrics();
}

void StoreCache::append(int layer, const float* k, const float* v, int n) {
  kv::LayerCache& cache = store_.layer(layer);
  if (int(cache.tokens()) + n > shape_.max_tokens) {
    fail("context is full: {} tokens cached + {} new > context size {}", cache.tokens(), n,
         shape_.max_tokens);
  }
  const int first = int(cache.tokens());
  const auto d = std::size_t(shape_.head_dim);
  const std::size_t count = std::size_t(n) * std::size_t(shape_.n_kv_heads) * d;
  // Quantized methods: the prompt attends to its own keys and values in full precision (as the
  // references do), not to their quantized copies. Full-precision methods read the store, so a
  // prompt and the same tokens fed one at a time compute exactly the same attention.
  batch_is_prompt_ = first == 0 && n > 1 && config_.quantized();
  const bool post_rope = config_.key_rope == kv::KeyRope::Post;
  if (batch_is_prompt_ || post_rope) {
    batch_keys_.assign(k, k + count);
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < shape_.n_kv_heads; ++h) {
        kv::rope_rotate(batch_keys_.data() +
                            (std::size_t(t) * std::size_t(shape_.n_kv_heads) + std::size_t(h)) * d,
                        shape_.head_dim, first + t, rope_.inv_freq.data(),
                        rope_.neox ? kv::RopeLayout::Neox : kv::RopeLayout::Normal);
      }
    }
    batch_values_ = v;
    batch_tokens_ = n;
  }
  cache.append(post_rope ? batch_keys_.data() : k, v, std::size_t(n));
}

void StoreCache::attend(int layer, const float* q, int n, int first_pos, float* out,
                        ThreadPool& pool) {
  if (batch_is_prompt_) {
    causal_attention(shape_, q, n, first_pos, batch_keys_.data(), batch_values_, batch_tokens_, out,
                     pool);
    return;
  }
  positions_.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) positions_[std::size_t(i)] = first_pos + i;
  store_.layer(layer).attend(q, std::size_t(n), shape_.n_heads, positions_.data(), out, &pool);
}

void StoreCache::clear() {
  store_.clear();
  // A new sequence builds its subspace from its own prompt, unless it came from a file.
  if (!states_from_file_) {
    for (int l = 0; l < shape_.n_layers; ++l) store_.layer(l).clear_states();
  }
}

void StoreCache::save_subspace(const std::string& path) const {
  store_.save_states(path, model_tag_);
}

}  // namespace squat
